// The source-side write simulator: random inserts, updates and deletes on public.customers and
// public.orders, as the original pipeline's producer did. With a fixed --seed, the same starting
// rows and one connection, the sequence of operations is the same.
//
// One connection commits a few hundred single-change transactions a second (each waits for its
// commit). --connections N runs N writers at once, each on its own connection with its share of
// --rate and --ops, so that concurrent transactions interleave in the WAL as a real application's
// do. Writer i picks the existing customers with id % N == i (and their orders), so the writers
// seldom race each other; when they do, the race is handled as one with any other client.
//
// Connects with libpq's PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD (or --url).
// Deleting a customer deletes its orders (ON DELETE CASCADE, see sql/001_source_schema.sql).
//
// Other clients may write the same tables at the same time (a user deleting customers, another
// simulator), and the database may restart. A transaction that loses such a race — an order for a
// customer deleted a moment before (foreign-key violation), a serialization failure or deadlock,
// a key taken meanwhile — is rolled back and skipped: the simulator reloads the ids it picks from
// and goes on. A lost connection is re-opened with backoff. What was skipped, and why, is in the
// final report; only other errors (a missing table, missing rights) end the run.
#include <CLI/CLI.hpp>
#include <dataflow/postgres/connection.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <random>
#include <thread>
#include <vector>

namespace {

using dataflow::postgres::Connection;
using dataflow::postgres::ConnectionConfig;
using Clock = std::chrono::steady_clock;

std::atomic<bool> stopRequested{false};

struct Options {
  int64_t sleepMs = 500;
  double insertP = 0.6, updateP = 0.3, deleteP = 0.1;
  int64_t ops = 0;  // 0: until interrupted
  uint64_t seed = 0;
  bool seedGiven = false;
  double rate = 0;  // ops/s; 0: use sleepMs
  int64_t batch = 1;
  int64_t connections = 1;
  std::string url;
  bool verbose = false;
};

const char* const kCountries[] = {"US", "CA", "DE", "FR", "GB", "BR", "IN", "JP", "AU", "ES"};
const char* const kStatuses[] = {"pending", "paid", "shipped", "delivered", "cancelled"};

// What a writer did: committed operations by kind, skipped transactions by the race lost.
struct Report {
  std::map<std::string, int64_t> counts;
  std::map<std::string, int64_t> skipped;
};

class Simulator {
 public:
  // Writer `shard` of `shards`: it picks the existing customers whose id % shards == shard.
  Simulator(const Options& o, int64_t shard = 0, int64_t shards = 1) : opts_(o), rng_(o.seed), shard_(shard), shards_(shards) {}

  void connect() {
    ConnectionConfig config;
    config.conninfo = opts_.url;
    config.applicationName = "simulate_writes";
    conn_ = std::make_unique<Connection>(Connection::open(config));
    loadIds();
  }

  Report run() {
    auto start = Clock::now();
    int64_t done = 0;
    while (!stopRequested && (opts_.ops == 0 || done < opts_.ops)) {
      int64_t inBatch = std::min<int64_t>(opts_.batch, opts_.ops == 0 ? opts_.batch : opts_.ops - done);
      pending_.clear();
      try {
        conn_->exec("BEGIN");
        std::vector<std::string> log;
        for (int64_t i = 0; i < inBatch; ++i) log.push_back(step());
        conn_->exec("COMMIT");
        for (auto& line : log) {
          if (opts_.verbose) std::cout << line << "\n";
        }
        for (const auto& kind : pending_) ++counts_[kind];
        done += inBatch;
      } catch (const dataflow::postgres::PostgresError& e) {
        std::string why = raceKind(e);
        if (why.empty()) throw;  // not a race: a real problem
        ++skipped_[why];
        ++done;  // a skipped transaction still counts towards --ops, so a run always ends
        if (e.connectionLost()) {
          std::cerr << "simulate_writes: " << e.what() << "; reconnecting\n";
          reconnect();
        } else {
          rollbackAndReload();
        }
        continue;
      }
      pace(start, done);
    }
    return {counts_, skipped_};
  }

 private:
  // Why a failed transaction is one to skip ("foreign_key", "serialization", ...), or empty when
  // the error is not a race with another client or a restart.
  static std::string raceKind(const dataflow::postgres::PostgresError& e) {
    const std::string& s = e.sqlState();
    if (e.connectionLost() || s.starts_with("08") || s.starts_with("57P")) return "connection_lost";
    if (s == "23503") return "foreign_key";
    if (s == "23505") return "unique_key";
    if (s == "40001") return "serialization";
    if (s == "40P01") return "deadlock";
    return "";
  }

  // After a failed transaction: back to no transaction, and the ids as the database has them now
  // (the failed one may have changed the local lists, and the other client changed the tables).
  void rollbackAndReload() {
    try {
      conn_->exec("ROLLBACK");
      loadIds();
    } catch (const dataflow::ConnectorError& e) {
      std::cerr << "simulate_writes: " << e.what() << "; reconnecting\n";
      reconnect();
    }
  }

  double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }
  size_t pick(size_t n) { return static_cast<size_t>(rng_() % n); }

  std::string step() {
    double r = uniform();
    double coin = uniform();
    if (r < opts_.insertP || (customers_.empty())) return insert(coin);
    if (r < opts_.insertP + opts_.updateP) return update(coin);
    return remove(coin);
  }

  std::string insert(double coin) {
    pending_.push_back("insert");
    if (customers_.empty() || coin < 0.35) {
      std::string country = kCountries[pick(std::size(kCountries))];
      auto res = conn_->execParams(
          "WITH n AS (SELECT nextval('public.customers_id_seq') AS id) "
          "INSERT INTO public.customers (id, email, country) "
          "SELECT id, 'user' || id || '@example.com', $1 FROM n RETURNING id",
          {country});
      int64_t id = res.int64(0, 0);
      customers_.push_back(id);
      return "insert customer " + std::to_string(id) + " country=" + country;
    }
    int64_t customer = customers_[pick(customers_.size())];
    int64_t cents = static_cast<int64_t>(pick(500000)) + 1;
    std::string amount = std::to_string(cents / 100) + "." + (cents % 100 < 10 ? "0" : "") + std::to_string(cents % 100);
    std::string status = kStatuses[pick(2)];
    auto res = conn_->execParams(
        "INSERT INTO public.orders (customer_id, amount, status) VALUES ($1, $2, $3) RETURNING id",
        {std::to_string(customer), amount, status});
    int64_t id = res.int64(0, 0);
    orders_[id] = customer;
    return "insert order " + std::to_string(id) + " customer=" + std::to_string(customer) + " amount=" + amount;
  }

  std::string update(double coin) {
    pending_.push_back("update");
    if (!orders_.empty() && coin < 0.6) {
      auto it = std::next(orders_.begin(), static_cast<long>(pick(orders_.size())));
      std::string status = kStatuses[pick(std::size(kStatuses))];
      conn_->execParams("UPDATE public.orders SET status = $2 WHERE id = $1", {std::to_string(it->first), status});
      return "update order " + std::to_string(it->first) + " status=" + status;
    }
    int64_t id = customers_[pick(customers_.size())];
    std::string country = kCountries[pick(std::size(kCountries))];
    conn_->execParams("UPDATE public.customers SET country = $2 WHERE id = $1", {std::to_string(id), country});
    return "update customer " + std::to_string(id) + " country=" + country;
  }

  std::string remove(double coin) {
    pending_.push_back("delete");
    if (!orders_.empty() && coin < 0.85) {
      auto it = std::next(orders_.begin(), static_cast<long>(pick(orders_.size())));
      int64_t id = it->first;
      orders_.erase(it);
      conn_->execParams("DELETE FROM public.orders WHERE id = $1", {std::to_string(id)});
      return "delete order " + std::to_string(id);
    }
    size_t index = pick(customers_.size());
    int64_t id = customers_[index];
    customers_.erase(customers_.begin() + static_cast<long>(index));
    std::erase_if(orders_, [&](const auto& kv) { return kv.second == id; });
    conn_->execParams("DELETE FROM public.customers WHERE id = $1", {std::to_string(id)});
    return "delete customer " + std::to_string(id) + " (and its orders)";
  }

  void loadIds() {
    customers_.clear();
    orders_.clear();
    const std::string mine = std::to_string(shards_) + " = " + std::to_string(shard_);
    auto c = conn_->exec("SELECT id FROM public.customers WHERE id % " + mine + " ORDER BY id");
    for (int i = 0; i < c.rows(); ++i) customers_.push_back(c.int64(i, 0));
    auto o = conn_->exec("SELECT id, customer_id FROM public.orders WHERE customer_id % " + mine + " ORDER BY id");
    for (int i = 0; i < o.rows(); ++i) orders_[o.int64(i, 0)] = o.int64(i, 1);
  }

  void reconnect() {
    auto backoff = std::chrono::milliseconds(100);
    while (!stopRequested) {
      try {
        connect();
        return;
      } catch (const dataflow::ConnectorError& e) {
        std::this_thread::sleep_for(backoff);
        backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
      }
    }
  }

  void pace(Clock::time_point start, int64_t done) {
    if (opts_.rate > 0) {
      auto due = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(done / opts_.rate));
      while (!stopRequested && Clock::now() < due) std::this_thread::sleep_for(std::min<Clock::duration>(due - Clock::now(), std::chrono::milliseconds(50)));
    } else if (opts_.sleepMs > 0) {
      auto due = Clock::now() + std::chrono::milliseconds(opts_.sleepMs);
      while (!stopRequested && Clock::now() < due) std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(opts_.sleepMs, 50)));
    }
  }

  Options opts_;
  std::mt19937_64 rng_;
  int64_t shard_, shards_;
  std::unique_ptr<Connection> conn_;
  std::vector<int64_t> customers_;
  std::map<int64_t, int64_t> orders_;  // order id -> customer id
  std::map<std::string, int64_t> counts_;   // committed operations by kind
  std::vector<std::string> pending_;        // the kinds of the open transaction's operations
  std::map<std::string, int64_t> skipped_;  // transactions skipped, by the race that lost them
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Random inserts, updates and deletes on public.customers and public.orders.\n"
               "Connects with PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD (or --url)."};
  app.add_option("--sleep-ms", o.sleepMs, "Delay after each transaction, ms (ignored with --rate)")->default_val(500)->check(CLI::NonNegativeNumber);
  app.add_option("--insert-p", o.insertP, "Probability of an insert")->default_val(0.6);
  app.add_option("--update-p", o.updateP, "Probability of an update")->default_val(0.3);
  app.add_option("--delete-p", o.deleteP, "Probability of a delete")->default_val(0.1);
  app.add_option("--ops", o.ops, "Operations to run; 0 runs until interrupted")->default_val(0)->check(CLI::NonNegativeNumber);
  auto* seedOpt = app.add_option("--seed", o.seed, "Random seed: the same seed and starting rows give the same operations");
  app.add_option("--rate", o.rate, "Target operations per second (overrides --sleep-ms)")->default_val(0)->check(CLI::NonNegativeNumber);
  app.add_option("--batch", o.batch, "Operations per transaction")->default_val(1)->check(CLI::PositiveNumber);
  app.add_option("--connections", o.connections, "Writers on connections of their own, sharing --rate and --ops")
      ->default_val(1)->check(CLI::Range(int64_t{1}, int64_t{64}));
  app.add_option("--url", o.url, "libpq connection string or URL (default: the PG* environment)");
  app.add_flag("-v,--verbose", o.verbose, "Print each operation");
  CLI11_PARSE(app, argc, argv);

  for (auto [name, p] : {std::pair{"--insert-p", o.insertP}, {"--update-p", o.updateP}, {"--delete-p", o.deleteP}}) {
    if (!(p >= 0.0 && p <= 1.0)) {
      std::cerr << "simulate_writes: " << name << " must be in [0, 1], got " << p << "\n";
      return 2;
    }
  }
  if (std::abs(o.insertP + o.updateP + o.deleteP - 1.0) > 1e-9) {
    std::cerr << "simulate_writes: --insert-p + --update-p + --delete-p must sum to 1, got "
              << o.insertP + o.updateP + o.deleteP << " (" << o.insertP << " + " << o.updateP << " + "
              << o.deleteP << ")\n";
    return 2;
  }
  if (!*seedOpt) o.seed = std::random_device{}();
  std::signal(SIGINT, [](int) { stopRequested = true; });
  std::signal(SIGTERM, [](int) { stopRequested = true; });
  const int64_t n = o.connections;
  std::vector<std::unique_ptr<Simulator>> writers;
  try {
    for (int64_t i = 0; i < n; ++i) {
      Options mine = o;
      mine.seed = o.seed + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
      mine.rate = o.rate / static_cast<double>(n);
      mine.ops = o.ops == 0 ? 0 : o.ops / n + (i < o.ops % n ? 1 : 0);
      if (o.ops != 0 && mine.ops == 0) continue;  // fewer operations than writers
      writers.push_back(std::make_unique<Simulator>(mine, i, n));
      writers.back()->connect();
    }
  } catch (const dataflow::Error& e) {
    std::cerr << "simulate_writes: " << e.what() << "\n";
    return 1;
  }
  std::cerr << "simulate_writes: seed " << o.seed << (n > 1 ? ", " + std::to_string(n) + " connections" : "") << "\n";
  const auto start = Clock::now();
  std::vector<Report> reports(writers.size());
  std::vector<std::string> errors(writers.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < writers.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        reports[i] = writers[i]->run();
      } catch (const dataflow::Error& e) {
        errors[i] = e.what();
        stopRequested = true;  // one writer's real problem ends the run
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Report total;
  for (const Report& r : reports) {
    for (const auto& [kind, count] : r.counts) total.counts[kind] += count;
    for (const auto& [why, count] : r.skipped) total.skipped[why] += count;
  }
  const int64_t committed = total.counts["insert"] + total.counts["update"] + total.counts["delete"];
  std::printf("simulate_writes: %lld ops (inserts=%lld updates=%lld deletes=%lld) in %.2f s, %.1f ops/s\n",
              static_cast<long long>(committed), static_cast<long long>(total.counts["insert"]),
              static_cast<long long>(total.counts["update"]), static_cast<long long>(total.counts["delete"]), seconds,
              seconds > 0 ? committed / seconds : 0.0);
  if (!total.skipped.empty()) {
    std::string detail;
    int64_t skipped = 0;
    for (const auto& [why, count] : total.skipped) {
      detail += (detail.empty() ? "" : ", ") + why + "=" + std::to_string(count);
      skipped += count;
    }
    std::printf("simulate_writes: skipped %lld transaction(s) that lost a race with another client (%s)\n",
                static_cast<long long>(skipped), detail.c_str());
  }
  for (const auto& e : errors) {
    if (e.empty()) continue;
    std::cerr << "simulate_writes: " << e << "\n";
    return 1;
  }
  return 0;
}
