"""Data layer: COCO JSON to TFRecords, and the synthetic shapes set."""
