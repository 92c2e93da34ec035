"""Finding, cropping and following the subject (a face or a whole person) with OpenCV."""
