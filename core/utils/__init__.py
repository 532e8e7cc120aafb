"""Plumbing shared by the core and the adapters: image reading, masks and RLE, coordinate
transforms, atomic files, prefetching, memory tuning, drawing."""
