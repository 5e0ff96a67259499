"""SR-GNN (Wu et al., AAAI 2019): model, data reading, training and metrics."""
