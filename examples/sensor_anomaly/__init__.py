"""IoT sensor pipeline: Avro readings from a fleet of sensors, scored on the stream."""
