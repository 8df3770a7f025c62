"""Bridges: this broker connects, as a client, to other brokers and passes topics both ways.

``mqttd.bridge.link.run_bridges`` starts one ``Bridge`` per ``[[bridges]]`` table of the
configuration. The package's modules, from the pure core outwards (the first four never import
trio):

* ``topics`` -- the topic mapping (Mosquitto's ``topic pattern direction qos local remote``);
* ``session`` -- the bridge's persistent session in the local broker: its durable queue;
* ``protocol`` -- the client side of a bridge connection (CONNECT, SUBSCRIBE, QoS 1/2 both
  ways, Keep Alive), sans-IO over ``mqttd.codec``;
* ``backoff`` -- reconnection delays;
* ``link`` -- the trio driver: transports, reconnection, the link state.

Bridges do not run in cluster mode (the configuration refuses them there): run them in a
separate mqttd that connects to the cluster.
"""

from __future__ import annotations
