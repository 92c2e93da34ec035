"""Model families, one folder each: networks, checkpoint loader and motion transfer."""
