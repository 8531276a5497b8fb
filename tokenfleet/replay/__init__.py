"""The fleet simulator: engine, gateway, balancer, batcher, replica, steptime, cost, metrics."""
