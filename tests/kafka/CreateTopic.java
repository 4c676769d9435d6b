// Creates a topic on a Kafka broker and waits until it is ready: used by the training-log
// benchmark (loadtest/bench.py), run as a single source file with the broker's jars:
//   java -cp 'tests/kafka/lib/*' tests/kafka/CreateTopic.java HOST:PORT TOPIC PARTITIONS
import java.util.List;
import java.util.Map;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;

public class CreateTopic {
    public static void main(String[] args) throws Exception {
        Map<String, Object> config = Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        try (Admin admin = Admin.create(config)) {
            NewTopic topic = new NewTopic(args[1], Integer.parseInt(args[2]), (short) 1);
            admin.createTopics(List.of(topic)).all().get();
            admin.describeTopics(List.of(args[1])).allTopicNames().get();
        }
    }
}
