"""IoT camera pipeline: JPEG/PNG frames on a topic, text in them found and read by PP-OCRv4."""
