"""`make bench`: the seed-style search against focaltune, Trainer and orchestration overheads."""
