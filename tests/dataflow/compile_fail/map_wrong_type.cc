// Must not compile: the lambda takes a string but the stream carries ints.
#include <dataflow/dataflow.h>

int main() {
  dataflow::Session session;
  auto in = std::make_shared<dataflow::MemoryStream<int>>("in");
  auto s = session.readStream(in).map([](const std::string& s) { return s.size(); });
  (void)s;
}
