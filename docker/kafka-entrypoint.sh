#!/bin/sh
# One combined KRaft broker/controller, formatted on first start (same settings as scripts/stack).
set -euf  # -f: the classpath wildcard is for java, not for the shell
cfg=/var/lib/kafka/server.properties
cat > "$cfg" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@kafka:9093
listeners=PLAINTEXT://:9092,CONTROLLER://:9093
advertised.listeners=PLAINTEXT://kafka:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=/var/lib/kafka/data
num.partitions=${KAFKA_NUM_PARTITIONS:-1}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
PROPS
java_cmd="java -Xmx512m -Dlog4j2.configurationFile=/opt/kafka/log4j2.xml -cp /opt/kafka/libs/*"
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  $java_cmd kafka.tools.StorageTool format -t "$($java_cmd kafka.tools.StorageTool random-uuid | tail -n 1)" -c "$cfg"
fi
exec $java_cmd kafka.Kafka "$cfg"
