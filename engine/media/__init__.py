"""Images and videos in and out: ffmpeg, Pillow, the output formats."""
