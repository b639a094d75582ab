"""P x K batch planning: stratified by top-level category, rare categories over-sampled, no product group twice in
one batch, every sample covered each epoch; a torch `BatchSampler` over the same planner."""
