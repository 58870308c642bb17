"""Datasets and images: .data/data.yaml files, image lists, names, YOLO labels, COCO annotations, image decoding,
augmentation, the training loader and the synthetic shapes dataset."""
