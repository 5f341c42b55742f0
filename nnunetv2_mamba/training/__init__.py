"""nnU-Net trainers for our networks and for scribble supervision."""
