// pilotfish command line: run, check, wait-ready, drain, top, tap, iptables, version. Nothing else lives here.

#include <openssl/crypto.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <spawn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "intercept/iptables.h"
#include "pilotfish/policy_loader.h"
#include "pilotfish/server.h"
#include "pilotfish/version.h"
#include "policy/policy_diff.h"

namespace {

constexpr const char* kUsage =
    "usage: pilotfish run --config FILE [--workers N] [--log-level debug|info|warn|error]\n"
    "       pilotfish check --config FILE [--against OLD_FILE]\n"
    "       pilotfish wait-ready (--config FILE | --admin HOST:PORT) [--timeout DURATION] [--path /ready|/live]\n"
    "       pilotfish drain (--config FILE | --admin HOST:PORT)\n"
    "       pilotfish top (--config FILE | --admin HOST:PORT) [--once]\n"
    "       pilotfish tap (--config FILE | --admin HOST:PORT) [--listener NAME] [--route NAME] [--cluster NAME]\n"
    "                 [--status 5xx|CODE] [--method METHOD] [--path-prefix /PATH] [--rate N] [--count N] [--json]\n"
    "       pilotfish iptables --policy FILE [--uid UID] [--print | --apply | --clean]\n"
    "                 [--inbound-ports LIST] [--exclude-inbound-ports LIST] [--exclude-outbound-ports LIST]\n"
    "                 [--ipv4-only]\n"
    "       pilotfish version\n"
    "       pilotfish --help\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "pilotfish: %s\n%s", message.c_str(), kUsage);
  return 2;
}

struct Options {
  std::string config;
  std::string against;  // check only: the policy to compare the new one with
  int workers = -1;
  std::string log_level;
};

// Parses the flags after the subcommand. Returns an error message, or empty on success.
std::string parse_flags(int argc, char** argv, int start, bool allow_run_flags, Options* out) {
  for (int i = start; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&](std::string_view name) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)name;
      return argv[++i];
    };
    if (arg == "--config" || arg == "-c") {
      const char* v = value(arg);
      if (!v) return "--config needs a FILE";
      out->config = v;
    } else if (arg.starts_with("--config=")) {
      out->config = std::string(arg.substr(9));
    } else if (arg == "--against" || arg.starts_with("--against=")) {
      // Said outright for run: "unknown argument" would suggest a typo rather than the wrong command.
      if (allow_run_flags) return "--against is only valid with check";
      if (arg == "--against") {
        const char* v = value(arg);
        if (!v) return "--against needs a FILE";
        out->against = v;
      } else {
        out->against = std::string(arg.substr(10));
      }
      if (out->against.empty()) return "--against needs a FILE";
    } else if (allow_run_flags && (arg == "--workers" || arg.starts_with("--workers="))) {
      std::string v;
      if (arg == "--workers") {
        const char* p = value(arg);
        if (!p) return "--workers needs a number";
        v = p;
      } else {
        v = std::string(arg.substr(10));
      }
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n < 1 || n > 1024) return "--workers must be a number from 1 to 1024";
      out->workers = static_cast<int>(n);
    } else if (allow_run_flags && (arg == "--log-level" || arg.starts_with("--log-level="))) {
      std::string v;
      if (arg == "--log-level") {
        const char* p = value(arg);
        if (!p) return "--log-level needs debug, info, warn or error";
        v = p;
      } else {
        v = std::string(arg.substr(12));
      }
      if (v != "debug" && v != "info" && v != "warn" && v != "error")
        return "--log-level must be debug, info, warn or error";
      out->log_level = v;
    } else {
      return "unknown argument '" + std::string(arg) + "'";
    }
  }
  if (out->config.empty()) return "--config FILE is required";
  return {};
}

int cmd_check(const Options& opt) {
  auto result = pilotfish::load_policy_file(opt.config);
  for (const auto& w : result.warnings) std::fprintf(stderr, "%s: warning: %s\n", opt.config.c_str(), w.c_str());
  if (!result.ok()) {
    for (const auto& e : result.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return 1;
  }
  // The old policy goes through the same loader, so both sides have their defaults filled in the
  // same way and a default written out is not reported as a change. Its warnings are left out:
  // they are about the policy being replaced, not the one being checked.
  pilotfish::PolicyLoadResult old;
  if (!opt.against.empty()) {
    old = pilotfish::load_policy_file(opt.against);
    if (!old.ok()) {
      for (const auto& e : old.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
      std::fprintf(stderr, "OLD policy %s did not load: cannot compare\n", opt.against.c_str());
      return 1;
    }
  }
  const auto& p = *result.policy;
  size_t routes = 0, endpoints = 0;
  for (const auto& l : p.listeners) routes += l.routes.size();
  for (const auto& c : p.clusters) endpoints += c.endpoints.size();
  std::printf("%s: ok: service %s, %zu listener%s, %zu route%s, %zu cluster%s, %zu endpoint%s\n",
              opt.config.c_str(), p.service.empty() ? "(unnamed)" : p.service.c_str(),
              p.listeners.size(), p.listeners.size() == 1 ? "" : "s", routes, routes == 1 ? "" : "s",
              p.clusters.size(), p.clusters.size() == 1 ? "" : "s", endpoints, endpoints == 1 ? "" : "s");
  if (old.policy) {
    std::printf("changes against %s:\n", opt.against.c_str());
    std::string text = pilotfish::diff_to_text(pilotfish::diff_policies(*old.policy, p));
    for (size_t start = 0; start <= text.size();) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::printf("  %.*s\n", static_cast<int>(end - start), text.data() + start);
      start = end + 1;
    }
  }
  return 0;
}

// The admin address of wait-ready, drain, top and tap: from --admin, or from the policy's
// admin.address. -1 when found, else the exit code.
int resolve_admin(const std::string& config, const std::string& admin_text, const char* name,
                  pilotfish::SocketAddress* admin) {
  if (config.empty() == admin_text.empty())
    return usage_error(std::string(name) + " needs --config FILE or --admin HOST:PORT");
  std::string err;
  if (!config.empty()) {
    auto result = pilotfish::load_policy_file(config);
    if (!result.ok()) {
      for (const auto& e : result.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
      return 1;
    }
    *admin = result.policy->admin_address;
    if (admin->port() == 0) return usage_error("the policy's admin.address has port 0; pass --admin HOST:PORT");
  } else {
    auto parsed = pilotfish::parse_socket_address(admin_text, &err);
    if (!parsed) return usage_error("--admin: " + err);
    *admin = *parsed;
  }
  return -1;
}

// `pilotfish tap`: the filters become GET /tap's query (the sidecar checks their values).
int cmd_tap(int argc, char** argv) {
  std::string config, admin_text, query;
  long count = 0;
  bool json = false;
  static constexpr std::pair<std::string_view, std::string_view> kFilters[] = {
      {"--listener", "listener"}, {"--route", "route"},          {"--cluster", "cluster"}, {"--status", "status"},
      {"--method", "method"},     {"--path-prefix", "path_prefix"}, {"--rate", "rate"},
  };
  for (int i = 2; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--json") {
      json = true;
      continue;
    }
    const auto* f = std::find_if(std::begin(kFilters), std::end(kFilters), [&](const auto& f) { return f.first == arg; });
    if (f == std::end(kFilters) && arg != "--config" && arg != "-c" && arg != "--admin" && arg != "--count")
      return usage_error("unknown argument '" + std::string(arg) + "' for tap");
    if (i + 1 >= argc) return usage_error(std::string(arg) + " needs a value");
    std::string_view value = argv[++i];
    if (arg == "--config" || arg == "-c") {
      config = value;
    } else if (arg == "--admin") {
      admin_text = value;
    } else if (arg == "--count") {
      char* end = nullptr;
      count = std::strtol(argv[i], &end, 10);
      if (value.empty() || *end != '\0' || count <= 0) return usage_error("--count is a number of requests, 1 or more");
    } else {
      if (!query.empty()) query += '&';
      query += f->second;
      query += '=';
      static constexpr char kHex[] = "0123456789ABCDEF";
      for (unsigned char c : value) {
        if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/')
          query += static_cast<char>(c);
        else
          query += '%', query += kHex[c >> 4], query += kHex[c & 15];
      }
    }
  }
  pilotfish::SocketAddress admin;
  if (int rc = resolve_admin(config, admin_text, "tap", &admin); rc >= 0) return rc;
  return pilotfish::tap(admin, query, count, json);
}

int cmd_wait_ready(int argc, char** argv, bool drain, bool top = false) {
  std::string config, admin_text, timeout_text = "60s", path = "/ready";
  bool once = false;
  const char* name = top ? "top" : drain ? "drain" : "wait-ready";
  for (int i = 2; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (top && arg == "--once") {
      once = true;
      continue;
    }
    std::string* target = arg == "--config" || arg == "-c" ? &config
                          : arg == "--admin"               ? &admin_text
                          : arg == "--timeout"             ? &timeout_text
                          : arg == "--path"                ? &path
                                                           : nullptr;
    if (!target || ((drain || top) && target != &config && target != &admin_text))
      return usage_error("unknown argument '" + std::string(arg) + "' for " + name);
    if (i + 1 >= argc) return usage_error(std::string(arg) + " needs a value");
    *target = argv[++i];
  }
  pilotfish::Duration timeout{};
  std::string err;
  if (!pilotfish::parse_duration(timeout_text, &timeout, &err)) return usage_error("--timeout: " + err);
  pilotfish::SocketAddress admin;
  if (int rc = resolve_admin(config, admin_text, name, &admin); rc >= 0) return rc;
  if (drain) return pilotfish::request_drain(admin);
  if (top) return pilotfish::top(admin, once);
  if (path != "/ready" && path != "/live") return usage_error("--path is /ready or /live");
  return pilotfish::wait_ready(admin, timeout, path);
}

// Runs one iptables command; its exit code (127 when it cannot be started).
int run_command(const pilotfish::IptablesCommand& c, bool quiet) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(c.program.c_str()));
  for (const auto& a : c.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (quiet) {
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return 127;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// iptables: the interception rules for a policy, printed, applied or removed.
int cmd_iptables(int argc, char** argv) {
  std::string policy_path, mode = "print";
  pilotfish::IptablesOptions options;
  for (int i = 2; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--print" || arg == "--apply" || arg == "--clean") {
      mode = std::string(arg.substr(2));
      continue;
    }
    if (arg == "--ipv4-only") {
      options.ipv6 = false;
      continue;
    }
    if (i + 1 >= argc) return usage_error(std::string(arg) + " needs a value");
    std::string value = argv[++i];
    std::string err;
    if (arg == "--policy" || arg == "--config") {
      policy_path = value;
    } else if (arg == "--uid") {
      char* end = nullptr;
      long uid = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || uid < 0 || uid > 4294967294L) return usage_error("--uid must be a number");
      options.uid = uid;
    } else if (arg == "--inbound-ports") {
      if (!pilotfish::parse_port_list(value, &options.inbound_ports, &err)) return usage_error("--inbound-ports: " + err);
    } else if (arg == "--exclude-inbound-ports") {
      if (!pilotfish::parse_port_list(value, &options.exclude_inbound_ports, &err))
        return usage_error("--exclude-inbound-ports: " + err);
    } else if (arg == "--exclude-outbound-ports") {
      if (!pilotfish::parse_port_list(value, &options.exclude_outbound_ports, &err))
        return usage_error("--exclude-outbound-ports: " + err);
    } else {
      return usage_error("unknown argument '" + std::string(arg) + "' for iptables");
    }
  }
  if (mode == "clean") {
    // Everything pilotfish's chains hold, whatever policy added them: no policy needed.
    for (const auto& c : pilotfish::iptables_clean_plan(options.ipv6)) run_command(c, /*quiet=*/true);
    std::printf("pilotfish interception rules removed\n");
    return 0;
  }
  if (policy_path.empty()) return usage_error("iptables needs --policy FILE");
  // The init step may run where the identity files are not mounted: only the listeners matter.
  std::ifstream in(policy_path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "pilotfish: cannot read %s: %s\n", policy_path.c_str(), std::strerror(errno));
    return 1;
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string dir = std::filesystem::path(policy_path).parent_path().string();
  auto result = pilotfish::load_policy_text(text.str(), policy_path, dir.empty() ? "." : dir, /*check_files=*/false);
  if (!result.ok()) {
    for (const auto& e : result.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return 1;
  }
  std::string err;
  auto plan = pilotfish::iptables_apply_plan(*result.policy, options, &err);
  if (plan.empty()) {
    std::fprintf(stderr, "pilotfish: %s\n", err.c_str());
    return 1;
  }
  if (mode == "print") {
    for (const auto& c : plan) std::printf("%s\n", c.text().c_str());
    return 0;
  }
  // apply: whatever an earlier apply left goes first, so applying twice gives the same rules.
  for (const auto& c : pilotfish::iptables_clean_plan(options.ipv6)) run_command(c, /*quiet=*/true);
  for (const auto& c : plan) {
    int rc = run_command(c, /*quiet=*/false);
    if (rc != 0) {
      std::fprintf(stderr, "pilotfish: '%s' failed (exit %d); removing the rules added so far\n", c.text().c_str(),
                   rc);
      for (const auto& undo : pilotfish::iptables_clean_plan(options.ipv6)) run_command(undo, /*quiet=*/true);
      return 1;
    }
  }
  std::printf("pilotfish interception rules applied (%zu commands)\n", plan.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // pilotfish configures TLS itself from the policy; the host's openssl.cnf must not change
  // what a sidecar accepts, and not reading it keeps idle memory down.
  OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr);
  if (argc < 2) return usage_error("missing command");
  std::string_view cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    if (argc > 2) return usage_error("version takes no arguments");
    std::fputs(pilotfish::version_text().c_str(), stdout);
    return 0;
  }
  if (cmd == "check" || cmd == "run") {
    Options opt;
    std::string err = parse_flags(argc, argv, 2, cmd == "run", &opt);
    if (!err.empty()) return usage_error(err);
    if (cmd == "check") return cmd_check(opt);
    pilotfish::RunOptions run;
    run.config_path = opt.config;
    run.workers_override = opt.workers;
    run.log_level_override = opt.log_level;
    return pilotfish::run_server(run);
  }
  if (cmd == "wait-ready") return cmd_wait_ready(argc, argv, /*drain=*/false);
  if (cmd == "drain") return cmd_wait_ready(argc, argv, /*drain=*/true);
  if (cmd == "top") return cmd_wait_ready(argc, argv, /*drain=*/false, /*top=*/true);
  if (cmd == "tap") return cmd_tap(argc, argv);
  if (cmd == "iptables") return cmd_iptables(argc, argv);
  return usage_error("unknown command '" + std::string(cmd) + "'");
}
