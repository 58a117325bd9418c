// Test helper: a real PostgreSQL for tests (label `postgres`). The server comes from PG_URL or from
// the ctest fixture (tests/testing/postgres_fixture.sh). Without one, tests skip — except when
// CI=true, where they fail.
#pragma once

#include <dataflow/postgres/connection.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace dataflow::testing_util {

inline std::string adminUrl() {
  if (const char* url = std::getenv("PG_URL"); url && *url) return url;
  if (const char* file = std::getenv("DATAFLOW_PG_URL_FILE")) {
    std::ifstream in(file);
    std::string url;
    if (in && std::getline(in, url) && !url.empty()) return url;
  }
  return "";
}

inline bool inCi() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// Replaces the database name of a postgresql:// URL.
inline std::string withDatabase(const std::string& url, const std::string& db) {
  auto slash = url.rfind('/');
  auto query = url.find('?', slash);
  return url.substr(0, slash + 1) + db + (query == std::string::npos ? "" : url.substr(query));
}

// Creates database `name` afresh with every migration of sql/ applied; returns its URL.
inline std::string freshDatabase(const std::string& name) {
  std::string admin = adminUrl();
  postgres::ConnectionConfig config;
  config.conninfo = admin;
  auto conn = postgres::Connection::open(config);
  conn.exec("DROP DATABASE IF EXISTS " + conn.quoteIdentifier(name) + " WITH (FORCE)");
  conn.exec("CREATE DATABASE " + conn.quoteIdentifier(name));
  std::string url = withDatabase(admin, name);
  config.conninfo = url;
  auto db = postgres::Connection::open(config);
  db.exec("SET client_min_messages = warning");
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(DATAFLOW_SQL_DIR)) {
    if (std::isdigit(static_cast<unsigned char>(e.path().filename().string()[0]))) files.push_back(e.path());  // migrations only
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f);
    std::stringstream ss;
    ss << in.rdbuf();
    db.exec(ss.str());
  }
  return url;
}

}  // namespace dataflow::testing_util

// Skips the test when no server is available, fails it under CI=true.
#define REQUIRE_POSTGRES()                                                                       \
  do {                                                                                           \
    if (::dataflow::testing_util::adminUrl().empty()) {                                          \
      if (::dataflow::testing_util::inCi()) FAIL() << "CI=true but no PostgreSQL is available";  \
      GTEST_SKIP() << "no PostgreSQL: set PG_URL or run through ctest";                          \
    }                                                                                            \
  } while (0)
