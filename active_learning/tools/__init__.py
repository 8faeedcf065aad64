"""Offline tools around the store: import of VOC / CSV seed labels (``importing``), COCO / VOC export
(``export``), pre-labeling a folder (``prelabel``) and the simulated loop (``demo``).

The names the command line shows live here, so it can offer them without importing the tools themselves.
"""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CSV_COLUMNS = ("label_name", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "image_name", "image_width", "image_height")
EXPORT_FORMATS = ("coco", "voc")
