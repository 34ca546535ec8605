"""Example Flower app: federated training with secagg's secure aggregation."""
