"""Pattern families, one small module per family; each factory returns a :class:`~sparsekit.Pattern`."""
