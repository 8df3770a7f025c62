"""Several mqttd processes -- workers on one machine, nodes on several -- as one broker, over
Redis (or Valkey), through coredis.

The pure parts (``routes``, ``wire``, ``keys``) hold the rules; ``redis_store`` and ``node``
talk to Redis. See ``mqttd.cluster.node`` for the theory of operation.
"""
