"""Model definitions; they know nothing of files, hubs or images."""
