"""Shipped vregion configs, installed as `vregion_configs` so `vregion train tiny` works from any folder."""
