// pilotfish command line: run, check, wait-ready, version. Nothing else lives here.

#include <openssl/crypto.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "pilotfish/policy_loader.h"
#include "pilotfish/server.h"
#include "pilotfish/version.h"
#include "policy/policy_diff.h"

namespace {

constexpr const char* kUsage =
    "usage: pilotfish run --config FILE [--workers N] [--log-level debug|info|warn|error]\n"
    "       pilotfish check --config FILE [--against OLD_FILE]\n"
    "       pilotfish wait-ready (--config FILE | --admin HOST:PORT) [--timeout DURATION]\n"
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

// wait-ready: the admin address comes from --admin, or from the policy's admin.address.
int cmd_wait_ready(int argc, char** argv) {
  std::string config, admin_text, timeout_text = "60s";
  for (int i = 2; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string* target = arg == "--config" || arg == "-c" ? &config
                          : arg == "--admin"               ? &admin_text
                          : arg == "--timeout"             ? &timeout_text
                                                           : nullptr;
    if (!target) return usage_error("unknown argument '" + std::string(arg) + "' for wait-ready");
    if (i + 1 >= argc) return usage_error(std::string(arg) + " needs a value");
    *target = argv[++i];
  }
  if (config.empty() == admin_text.empty()) return usage_error("wait-ready needs --config FILE or --admin HOST:PORT");
  pilotfish::Duration timeout{};
  std::string err;
  if (!pilotfish::parse_duration(timeout_text, &timeout, &err)) return usage_error("--timeout: " + err);
  pilotfish::SocketAddress admin;
  if (!config.empty()) {
    auto result = pilotfish::load_policy_file(config);
    if (!result.ok()) {
      for (const auto& e : result.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
      return 1;
    }
    admin = result.policy->admin_address;
    if (admin.port() == 0) return usage_error("the policy's admin.address has port 0; pass --admin HOST:PORT");
  } else {
    auto parsed = pilotfish::parse_socket_address(admin_text, &err);
    if (!parsed) return usage_error("--admin: " + err);
    admin = *parsed;
  }
  return pilotfish::wait_ready(admin, timeout);
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
  if (cmd == "wait-ready") return cmd_wait_ready(argc, argv);
  return usage_error("unknown command '" + std::string(cmd) + "'");
}
