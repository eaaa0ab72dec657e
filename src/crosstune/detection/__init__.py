"""Object detection: box annotations (VOC, COCO, YOLO), torchvision detectors on the project's image backbones."""
