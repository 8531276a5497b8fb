"""Hardware profiles and the microbenchmarks and fits that produce them."""
