"""Accuracy: Darknet's mAP and COCO's metrics (pycocotools) over detections and ground truth."""
