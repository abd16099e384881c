"""nn.Modules only: no data, no training, no export."""
