"""Failover harness (`make failover`): real workers, beat and a publisher under load meet the
ways an ElastiCache replication group fails, on loopback; counted from the tasks' ledger.

cluster: the primary, the replica and the forwarder standing in for the endpoint name;
modes: the faults; run: one mode end to end; ledger: figures and verdict; logs and report:
what the processes said, and bench/results/failover.{md,json}.
"""
