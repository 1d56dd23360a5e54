"""Multi-node launch support: the rendezvous port, the run directory for the batch script, and the preflight
check (`vregion doctor`) that every node sees the same software, config, shards and output directory."""
