// `dataflow`: runs and supervises job processes, like spark-submit --supervise. In the runner
// container it is PID 1 (`dataflow supervise`): `docker stop` signals only PID 1 and processes
// started with `docker exec` never get SIGTERM, so jobs are started *by the supervisor*, on request:
//
//   dataflow supervise [--home DIR]          the daemon (PID 1 in Docker; works the same outside)
//   dataflow submit JOB [job flags...]       start JOB (a program in the jobs folder, or a path)
//   dataflow list                            jobs, states, pids, restarts
//   dataflow stop NAME                       SIGTERM; waits until the job has exited
//   dataflow logs NAME [-f]                  the job's log
//
// A job that exits non-zero (or dies by a signal) is restarted with exponential backoff (1 s up to
// 60 s, reset after a minute of uptime); one that exits 0 is done. The jobs that should be running
// are remembered in the home folder (submitted.json): a supervisor that starts again (`docker
// start` of the container, whose home is a volume) starts them again, and each continues from its
// checkpoint; a job stopped with `dataflow stop` or finished stays stopped. On SIGTERM/SIGINT the supervisor
// sends SIGTERM to every job, waits for them (their running batch commits), then exits 0. As PID 1
// it also reaps orphaned processes. With DATAFLOW_UI_PORT it serves a status page (see
// status_page.h) on 127.0.0.1 (DATAFLOW_UI_HOST to change); with DATAFLOW_METRICS_BASE_PORT each
// job gets METRICS_PORT = base, base+1, ... Neither the page nor a job's endpoints change state:
// GET only.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <boost/json.hpp>
#include <boost/json/src.hpp>  // header-only use: one library less to link

#include "status_page.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

fs::path homeDir() {
  if (const char* h = std::getenv("DATAFLOW_HOME"); h && *h) return h;
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".dataflow";
  return "/var/lib/dataflow";
}

// A job's command as shown by `dataflow list` and the status page: secrets in its arguments are
// masked (a password in a URL's user part or query, `password=...` in a libpq conninfo, librdkafka's
// `sasl.password=...` and `ssl.key.password=...`, any `--...password...` flag's value). The
// supervisor still starts the job with the arguments as given.
std::string shownCommand(const std::vector<std::string>& argv) {
  static const std::regex urlPassword(R"(([A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^@\s]*@)");
  static const std::regex keyValue(R"(((?:^|[\s,;?&])[^\s=,;?&]*(?:password|secret)[^\s=,;?&]*\s*=\s*)('[^']*'|[^\s,;&]*))",
                                   std::regex::icase);
  static const std::regex secretFlag(R"(^--?[A-Za-z0-9-]*(password|secret)[A-Za-z0-9-]*$)", std::regex::icase);
  std::string command;
  bool maskNext = false;
  for (const auto& arg : argv) {
    std::string shown = maskNext ? "***" : std::regex_replace(std::regex_replace(arg, urlPassword, "$1***@"), keyValue, "$1***");
    maskNext = std::regex_match(arg, secretFlag);
    command += (command.empty() ? "" : " ") + shown;
  }
  return command;
}

fs::path jobsDir(const char* argv0) {
  if (const char* d = std::getenv("DATAFLOW_JOBS_DIR"); d && *d) return d;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path(argv0).parent_path() : self.parent_path();
}

fs::path socketPath(const fs::path& home) { return home / "supervisor.sock"; }

[[noreturn]] void die(const std::string& message) {
  std::cerr << "dataflow: " << message << "\n";
  std::exit(2);
}

// ------------------------------------------------------------------------------ client side

json::object request(const fs::path& home, const json::object& req) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string path = socketPath(home).string();
  if (path.size() >= sizeof addr.sun_path) die("socket path too long: " + path);
  std::strcpy(addr.sun_path, path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    die("no supervisor at " + path + " (start one with `dataflow supervise`): " + std::strerror(errno));
  }
  std::string line = json::serialize(req) + "\n";
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) die("cannot send the request");
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) reply.append(buf, static_cast<size_t>(n));
  ::close(fd);
  json::error_code ec;
  auto v = json::parse(reply, ec);
  if (ec || !v.is_object()) die("bad reply from the supervisor: " + reply);
  return v.as_object();
}

int printReply(const json::object& reply) {
  if (auto e = reply.find("error"); e != reply.end()) {
    std::cerr << "dataflow: " << e->value().as_string().c_str() << "\n";
    return 1;
  }
  if (auto m = reply.find("message"); m != reply.end()) std::cout << m->value().as_string().c_str() << "\n";
  return 0;
}

int clientList(const fs::path& home) {
  auto reply = request(home, {{"cmd", "list"}});
  if (reply.contains("error")) return printReply(reply);
  std::printf("%-28s %-11s %-8s %-9s %s\n", "NAME", "STATE", "PID", "RESTARTS", "COMMAND");
  for (const auto& j : reply["jobs"].as_array()) {
    const auto& o = j.as_object();
    std::printf("%-28s %-11s %-8lld %-9lld %s\n", o.at("name").as_string().c_str(), o.at("state").as_string().c_str(),
                static_cast<long long>(o.at("pid").as_int64()), static_cast<long long>(o.at("restarts").as_int64()),
                o.at("command").as_string().c_str());
  }
  return 0;
}

int clientStop(const fs::path& home, const std::string& name) {
  auto reply = request(home, {{"cmd", "stop"}, {"name", name}});
  if (reply.contains("error")) return printReply(reply);
  // Wait until the job has exited: its running batch commits first.
  for (int i = 0; i < 1200; ++i) {
    auto list = request(home, {{"cmd", "list"}});
    bool running = false;
    for (const auto& j : list["jobs"].as_array()) {
      const auto& o = j.as_object();
      if (o.at("name").as_string() == name && o.at("pid").as_int64() > 0) running = true;
    }
    if (!running) {
      std::cout << "stopped " << name << "\n";
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::cerr << "dataflow: " << name << " has not exited after 120 s\n";
  return 1;
}

int clientLogs(const fs::path& home, const std::string& name, bool follow) {
  fs::path log = home / "logs" / (name + ".log");
  std::ifstream in(log);
  if (!in) die("no log for job '" + name + "' (" + log.string() + ")");
  std::string line;
  while (true) {
    while (std::getline(in, line)) std::cout << line << "\n";
    if (!follow) return 0;
    std::cout.flush();
    in.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// ------------------------------------------------------------------------------ the daemon

struct Job {
  std::string name;
  int metricsPort = 0;  // given to the job as METRICS_PORT; the status page reads it
  std::vector<std::string> argv;  // argv[0] is the program path
  pid_t pid = 0;
  std::string state;  // running, stopping, restarting, finished, stopped
  int restarts = 0;
  int lastExit = 0;
  Clock::time_point startedAt{};
  Clock::time_point restartAt{};
  std::chrono::seconds backoff{1};
};

class Supervisor {
 public:
  Supervisor(fs::path home, fs::path jobs) : home_(std::move(home)), jobs_(std::move(jobs)) {}

  int run() {
    fs::create_directories(home_ / "logs");
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGCHLD, SIGTERM, SIGINT}) sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    int lfd = listenSocket();
    startStatusPage();
    std::cerr << "dataflow supervise: listening on " << socketPath(home_) << ", jobs from " << jobs_ << "\n";
    resumeRemembered();
    bool& shuttingDown = shuttingDown_;
    Clock::time_point shutdownDeadline{};
    while (true) {
      int timeout = 1000;
      pollfd fds[2] = {{sfd, POLLIN, 0}, {lfd, POLLIN, 0}};
      ::poll(fds, shuttingDown ? 1 : 2, timeout);
      std::lock_guard lock(mu_);
      if (fds[0].revents & POLLIN) {
        signalfd_siginfo si;
        while (::read(sfd, &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGCHLD) reap();
          else if (!shuttingDown) {
            std::cerr << "dataflow supervise: " << (si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT")
                      << ": stopping every job\n";
            shuttingDown = true;
            shutdownDeadline = Clock::now() + std::chrono::seconds(gracePeriod());
            for (auto& [name, job] : jobs) terminate(job);
          }
        }
      }
      if (!shuttingDown && (fds[1].revents & POLLIN)) serve(lfd);
      reap();
      if (shuttingDown) {
        bool any = false;
        for (auto& [name, job] : jobs) any = any || job.pid > 0;
        if (!any) break;
        if (Clock::now() > shutdownDeadline) {
          for (auto& [name, job] : jobs) {
            if (job.pid > 0) ::kill(job.pid, SIGKILL);
          }
        }
        continue;
      }
      restartDue();
    }
    ::close(lfd);
    if (ui_.thread.joinable()) {
      ui_.server.stop();
      ui_.thread.join();
    }
    fs::remove(socketPath(home_));
    std::cerr << "dataflow supervise: every job stopped\n";
    return 0;
  }

 private:
  fs::path rememberedPath() const { return home_ / "submitted.json"; }

  // Writes the jobs that should be running (running, or waiting to restart) to submitted.json,
  // atomically (a new file renamed over the old one).
  void remember() {
    json::array list;
    for (const auto& [name, job] : jobs) {
      if (job.state != "running" && job.state != "restarting") continue;
      json::array argv;
      for (const auto& a : job.argv) argv.emplace_back(a);
      list.push_back(json::object{{"name", name}, {"argv", argv}, {"metricsPort", job.metricsPort}});
    }
    fs::path tmp = rememberedPath();
    tmp += ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      // The arguments may hold secrets (a password in --pg-url): readable by the owner only.
      std::error_code ec;
      fs::permissions(tmp, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace, ec);
      out << json::serialize(list) << "\n";
      if (!out || ec) {
        std::cerr << "dataflow supervise: cannot write " << tmp << "; submitted jobs will not restart with the supervisor\n";
        return;
      }
    }
    fs::rename(tmp, rememberedPath());
  }

  // At start: the jobs that were running when the supervisor last stopped.
  void resumeRemembered() {
    std::lock_guard lock(mu_);
    std::ifstream in(rememberedPath());
    if (!in) return;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    try {
      const json::value remembered = json::parse(text);
      for (const auto& v : remembered.as_array()) {
        const auto& o = v.as_object();
        Job& job = jobs[std::string(o.at("name").as_string())];
        job.name = std::string(o.at("name").as_string());
        for (const auto& a : o.at("argv").as_array()) job.argv.emplace_back(a.as_string());
        job.metricsPort = static_cast<int>(o.at("metricsPort").as_int64());
        if (job.argv.empty() || !fs::exists(job.argv[0])) {
          std::cerr << "dataflow supervise: not resuming " << job.name << ": its program is gone\n";
          jobs.erase(job.name);
          continue;
        }
        std::cerr << "dataflow supervise: resuming " << job.name << " (submitted before the supervisor stopped)\n";
        spawn(job);
      }
    } catch (const std::exception& e) {
      std::cerr << "dataflow supervise: ignoring " << rememberedPath() << ": " << e.what() << "\n";
    }
    remember();
  }

  static int gracePeriod() {
    const char* g = std::getenv("DATAFLOW_STOP_GRACE_SECONDS");
    return g ? std::max(1, std::atoi(g)) : 60;
  }

  int listenSocket() {
    fs::path path = socketPath(home_);
    fs::remove(path);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 16) != 0) {
      die("cannot listen on " + path.string() + ": " + std::strerror(errno));
    }
    ::chmod(path.c_str(), 0660);
    return fd;
  }

  void serve(int lfd) {
    int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;
    std::string line;
    char buf[4096];
    ssize_t n;
    while (line.find('\n') == std::string::npos && (n = ::read(c, buf, sizeof buf)) > 0) line.append(buf, static_cast<size_t>(n));
    json::object reply;
    try {
      reply = handle(json::parse(line).as_object());
    } catch (const std::exception& e) {
      reply = {{"error", std::string("bad request: ") + e.what()}};
    }
    std::string out = json::serialize(reply) + "\n";
    [[maybe_unused]] auto written = ::write(c, out.data(), out.size());
    ::close(c);
  }

  json::object handle(const json::object& req) {
    std::string cmd(req.at("cmd").as_string());
    if (cmd == "list") {
      json::array list;
      for (const auto& [name, job] : jobs) {
        const std::string command = shownCommand(job.argv);
        list.push_back(json::object{{"name", name}, {"state", job.state}, {"pid", job.pid},
                                    {"restarts", job.restarts}, {"lastExit", job.lastExit}, {"command", command},
                                    {"metricsPort", job.metricsPort}});
      }
      return {{"jobs", list}};
    }
    if (cmd == "submit") {
      std::vector<std::string> argv;
      for (const auto& a : req.at("argv").as_array()) argv.emplace_back(a.as_string());
      if (argv.empty()) return {{"error", "submit: no job given"}};
      fs::path program = argv[0];
      if (program.is_relative() && !fs::exists(program)) program = jobs_ / program;
      if (!fs::exists(program)) return {{"error", "submit: no job program '" + argv[0] + "' (looked in " + jobs_.string() + ")"}};
      argv[0] = program.string();
      std::string name = req.contains("name") ? std::string(req.at("name").as_string()) : program.filename().string();
      if (auto it = jobs.find(name); it != jobs.end() && it->second.pid > 0) {
        return {{"error", "submit: job '" + name + "' is already running (pid " + std::to_string(it->second.pid) + ")"}};
      }
      int keepPort = jobs.count(name) ? jobs[name].metricsPort : 0;
      Job& job = jobs[name];
      job = Job{};
      job.name = name;
      job.argv = argv;
      job.metricsPort = keepPort ? keepPort : nextMetricsPort();
      spawn(job);
      remember();
      return {{"message", "submitted " + name + " (pid " + std::to_string(job.pid) + ", log " +
                              (home_ / "logs" / (name + ".log")).string() + ")"}};
    }
    if (cmd == "stop") {
      std::string name(req.at("name").as_string());
      auto it = jobs.find(name);
      if (it == jobs.end()) return {{"error", "stop: no job '" + name + "'"}};
      if (it->second.pid > 0) {
        terminate(it->second);
      } else {
        it->second.state = "stopped";
      }
      remember();
      return {{"message", "stopping " + name}};
    }
    return {{"error", "unknown command '" + cmd + "'"}};
  }

  void spawn(Job& job) {
    fs::path log = home_ / "logs" / (job.name + ".log");
    pid_t pid = ::fork();
    if (pid == 0) {
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      ::setsid();
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::close(fd);
      }
      if (job.metricsPort > 0) ::setenv("METRICS_PORT", std::to_string(job.metricsPort).c_str(), 1);
      ::setenv("DATAFLOW_RESTARTS", std::to_string(job.restarts).c_str(), 1);  // exported as a metric
      int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      std::vector<char*> args;
      for (auto& a : job.argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      std::fprintf(stderr, "dataflow supervise: cannot execute %s: %s\n", args[0], std::strerror(errno));
      ::_exit(127);
    }
    job.pid = pid;
    job.state = "running";
    job.startedAt = Clock::now();
    std::cerr << "dataflow supervise: started " << job.name << " (pid " << pid << ")\n";
  }

  void terminate(Job& job) {
    if (job.pid > 0) {
      ::kill(job.pid, SIGTERM);
      job.state = "stopping";
    } else if (job.state == "restarting") {
      job.state = "stopped";
    }
  }

  void reap() {
    int status;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      for (auto& [name, job] : jobs) {
        if (job.pid != pid) continue;
        job.pid = 0;
        job.lastExit = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        bool failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        if (job.state == "stopping") {
          job.state = "stopped";
        } else if (failed) {
          if (Clock::now() - job.startedAt > std::chrono::minutes(1)) job.backoff = std::chrono::seconds(1);
          job.state = "restarting";
          job.restartAt = Clock::now() + job.backoff;
          std::cerr << "dataflow supervise: " << name << " exited with " << job.lastExit << "; restarting in "
                    << job.backoff.count() << " s\n";
          job.backoff = std::min(job.backoff * 2, std::chrono::seconds(60));
        } else {
          job.state = "finished";
          if (!shuttingDown_) remember();
        }
        std::cerr << "dataflow supervise: " << name << " exited (" << job.lastExit << "), " << job.state << "\n";
      }
    }
  }

  void restartDue() {
    for (auto& [name, job] : jobs) {
      if (job.state == "restarting" && Clock::now() >= job.restartAt) {
        ++job.restarts;
        spawn(job);
      }
    }
  }

  // The status page: / (HTML) and /api/jobs (jobs, with each running job's recent progress and
  // dead letters fetched from its /progress and /deadletters). Port: DATAFLOW_UI_PORT (0 = off).
  void startStatusPage() {
    const char* p = std::getenv("DATAFLOW_UI_PORT");
    int port = p ? std::atoi(p) : 0;
    if (port <= 0) return;
    ui_.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(dataflow::supervisor::kStatusPage, "text/html; charset=utf-8");
    });
    ui_.server.Get("/api/jobs", [this](const httplib::Request&, httplib::Response& res) {
      json::array out;
      {
        std::lock_guard lock(mu_);
        out = handle({{"cmd", "list"}}).at("jobs").as_array();
      }
      for (auto& j : out) {
        auto& o = j.as_object();
        int mport = static_cast<int>(o.at("metricsPort").as_int64());
        if (o.at("pid").as_int64() <= 0 || mport <= 0) continue;
        httplib::Client client("127.0.0.1", mport);
        client.set_connection_timeout(0, 300000);
        client.set_read_timeout(1, 0);
        for (auto [path, field] : {std::pair{"/progress", "progress"}, {"/deadletters", "deadLetters"}, {"/source", "source"}}) {
          if (auto r = client.Get(path); r && r->status == 200) {
            json::error_code ec;
            auto v = json::parse(r->body, ec);
            if (!ec) o[field] = std::move(v);
          }
        }
      }
      res.set_content(json::serialize(out), "application/json");
    });
    // Loopback unless DATAFLOW_UI_HOST says otherwise: the page has no authentication (the runner
    // image sets 0.0.0.0, and compose publishes the port on the host's 127.0.0.1).
    const char* h = std::getenv("DATAFLOW_UI_HOST");
    const std::string host = h && *h ? h : "127.0.0.1";
    if (!ui_.server.bind_to_port(host, port)) die("status page: port " + std::to_string(port) + " on " + host + " is not available");
    ui_.thread = std::thread([this] { ui_.server.listen_after_bind(); });
    std::cerr << "dataflow supervise: status page on http://" << host << ":" << port << "/\n";
  }

  int nextMetricsPort() {
    const char* b = std::getenv("DATAFLOW_METRICS_BASE_PORT");
    int base = b ? std::atoi(b) : 0;
    if (base <= 0) return 0;
    int port = base;
    for (bool taken = true; taken; ++port) {
      taken = false;
      for (const auto& [n, j] : jobs) taken = taken || j.metricsPort == port;
      if (!taken) return port;
    }
    return 0;
  }

  fs::path home_, jobs_;
  std::map<std::string, Job> jobs;
  std::mutex mu_;  // jobs, between the main loop and the status page's thread
  bool shuttingDown_ = false;  // SIGTERM/SIGINT: every job is stopping; what runs stays remembered
  struct {
    httplib::Server server;
    std::thread thread;
  } ui_;
};

void usage() {
  std::cout << "usage: dataflow supervise | submit [--name NAME] JOB [flags...] | list | stop NAME | logs NAME [-f]\n"
               "  DATAFLOW_HOME      sockets and logs (default ~/.dataflow)\n"
               "  DATAFLOW_JOBS_DIR  where JOB names are looked up (default: the folder of this program)\n"
               "  DATAFLOW_UI_PORT   serve the status page on this port (default: off)\n"
               "  DATAFLOW_UI_HOST   interface of the status page (default 127.0.0.1)\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    usage();
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  fs::path home = homeDir();
  if (cmd == "supervise") return Supervisor(home, jobsDir(argv[0])).run();
  if (cmd == "list") return clientList(home);
  if (cmd == "submit") {
    int i = 2;
    json::object req{{"cmd", "submit"}};
    if (i + 1 < argc && std::string(argv[i]) == "--name") {
      req["name"] = argv[i + 1];
      i += 2;
    }
    if (i >= argc) die("submit: which job? (e.g. dataflow submit stream_orders --topic ...)");
    json::array args;
    for (; i < argc; ++i) args.emplace_back(argv[i]);
    req["argv"] = std::move(args);
    return printReply(request(home, req));
  }
  if (cmd == "stop") {
    if (argc != 3) die("usage: dataflow stop NAME");
    return clientStop(home, argv[2]);
  }
  if (cmd == "logs") {
    if (argc < 3) die("usage: dataflow logs NAME [-f]");
    return clientLogs(home, argv[2], argc > 3 && std::string(argv[3]) == "-f");
  }
  usage();
  die("unknown command '" + cmd + "'");
}
