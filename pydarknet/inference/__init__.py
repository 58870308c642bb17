"""Detection: pre-processing, decoding, NMS, test-time augmentation and the Results API."""
