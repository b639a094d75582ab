"""Image decoding, inspection (size, EXIF, pHash, blur) and training preprocessing."""
