"""Social-post sentiment: Avro posts, a pretrained sentence encoder in ONNX, per-hashtag windows."""
