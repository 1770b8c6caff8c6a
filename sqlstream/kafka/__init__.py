"""A Kafka-protocol listener on a sqlstream file (``sqlstream serve --kafka HOST:PORT``).

Kafka clients (kafka-python, aiokafka, confluent-kafka/librdkafka, kcat) work unchanged:
a topic partition is a stream, a Kafka offset the record's offset (README "Kafka").
Needs the ``kafka`` extra (kio for the wire format, cramjam for the codecs).

>>> from sqlstream.kafka import Settings, start
>>> running = start("app.db", Settings(port=0))       # doctest: +SKIP
>>> running.bootstrap_servers                          # doctest: +SKIP
'127.0.0.1:40123'
"""

from __future__ import annotations

from .handlers import Settings
from .listener import KafkaListener, RunningListener, check_bind, start

__all__ = ["Settings", "KafkaListener", "RunningListener", "start", "check_bind"]
