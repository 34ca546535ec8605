"""secagg example: silos fine-tune the LoRA adapters of a small causal LM over Flower."""
