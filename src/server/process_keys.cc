// The keys the process holds for the workers: the identity's TLS material, rotated when its
// files change, and the JWKS key sets, loaded again when a JWKS file changes. Both reach the
// workers as messages (Worker::update_keys), and only when they load: files that do not make a
// usable identity, or a JWKS file that does not parse, are refused and the keys in use stay.
#include <algorithm>

#include "log/logger.h"
#include "server/process.h"

namespace pilotfish {

namespace {

std::vector<std::string> identity_paths(const Identity& identity) {
  return {identity.cert, identity.key, identity.ca};
}

std::vector<std::string> jwks_paths(const Policy& p) {
  std::vector<std::string> out;
  auto add = [&out](const std::optional<AuthPolicy>& auth) {
    if (auth && std::find(out.begin(), out.end(), auth->jwks) == out.end()) out.push_back(auth->jwks);
  };
  for (const auto& l : p.listeners) {
    add(l.auth);
    for (const auto& r : l.routes) add(r.auth);
  }
  return out;
}

}  // namespace

void Process::init_keys() {
  // The identity files are polled every second, JWKS files too; both folders are watched.
  identity_watch = std::make_unique<FileWatch>(loop, "identity", 1000, [this] { rotate_identity(false); });
  jwks_watch = std::make_unique<FileWatch>(loop, "jwks", 1000, [this] { jwks_files_changed(); });
  uv_timer_init(loop, &identity_retry);
  identity_retry.data = this;
}

void Process::close_keys() {
  identity_watch->close();
  jwks_watch->close();
  uv_close(reinterpret_cast<uv_handle_t*>(&identity_retry), nullptr);
}

void Process::send_keys() {
  for (auto& w : workers) w->update_keys(keys());
}

void Process::use_material(TlsMaterialPtr material) {
  tls = std::move(material);
  registry->clear_cert_expiry();
  if (!tls) return;
  registry->set_cert_expiry("identity", static_cast<double>(tls->cert_not_after()));
  registry->set_cert_expiry("ca", static_cast<double>(tls->ca_not_after()));
}

TlsMaterialPtr Process::material_for(const Identity& identity, FileStamps* stamps, std::string* err) {
  *stamps = stamps_of(identity_paths(identity));
  if (tls && tls->identity().cert == identity.cert && tls->identity().key == identity.key &&
      tls->identity().ca == identity.ca && *stamps == identity_watch->seen())
    return tls;
  return TlsMaterial::build(identity, err);
}

void Process::watch_identity(FileStamps stamps) {
  uv_timer_stop(&identity_retry);
  if (!policy->identity) {
    identity_watch->watch({}, {});
    return;
  }
  identity_watch->watch(identity_paths(*policy->identity), std::move(stamps));
}

// `retry`: the files did not change since they were refused, but what refused them may have (a
// certificate not valid yet, a CA bundle that arrives later): tried again every 5 s.
void Process::rotate_identity(bool retry) {
  FileStamps now = identity_watch->read();
  if ((!retry && now == identity_watch->seen()) || !policy->identity || draining) return;
  identity_watch->seen(now);
  std::string err;
  TlsMaterialPtr next = TlsMaterial::build(*policy->identity, &err);
  if (!next) {
    // Said once per reason; the retries that fail the same way are quiet.
    if (!retry || err != last_refusal) {
      registry->process().identity_rotations_rejected.add();
      log_error("identity files changed but are refused: " + err + "; new handshakes keep using " +
                (tls ? tls->spiffe_id() + " (certificate valid until " + iso_time(tls->cert_not_after()) + ")"
                     : std::string("no identity")));
    }
    last_refusal = err;
    uv_timer_start(
        &identity_retry, [](uv_timer_t* t) { static_cast<Process*>(t->data)->rotate_identity(true); }, 5000, 0);
    return;
  }
  last_refusal.clear();
  uv_timer_stop(&identity_retry);
  std::string before = tls ? tls->spiffe_id() : std::string("none");
  use_material(next);
  send_keys();
  registry->process().identity_rotations_applied.add();
  log_info("identity rotated: " + next->spiffe_id() + (before != next->spiffe_id() ? " (was " + before + ")" : "") +
           ", certificate valid until " + iso_time(next->cert_not_after()) +
           "; new handshakes use it, open connections continue");
}

void Process::use_jwks(const Policy& p, const JwksSet& loaded) {
  std::vector<std::string> paths = jwks_paths(p);
  auto next = std::make_shared<JwksSet>();
  for (const auto& path : paths) {
    auto found = loaded.find(path);
    if (found != loaded.end()) (*next)[path] = found->second;
  }
  jwks = std::move(next);
  FileStamps stamps = stamps_of(paths);
  jwks_watch->watch(std::move(paths), std::move(stamps));
}

void Process::jwks_files_changed() {
  FileStamps now = jwks_watch->read();
  const FileStamps& seen = jwks_watch->seen();
  auto next = std::make_shared<JwksSet>(*jwks);
  bool changed = false;
  for (size_t i = 0; i < now.size(); ++i) {
    if (i < seen.size() && now[i] == seen[i]) continue;
    const std::string& path = jwks_watch->paths()[i];
    std::string err;
    std::vector<std::string> skipped;
    if (JwksPtr keys = Jwks::load(path, &err, &skipped)) {
      (*next)[path] = std::move(keys);
      changed = true;
      log_info("jwks " + path + " reloaded: new requests are checked against its keys");
      for (const auto& w : skipped) log_warn("jwks " + path + ": " + w);
    } else {
      log_error("jwks " + path + " changed but is refused: " + err + "; the keys in use stay");
    }
  }
  jwks_watch->seen(std::move(now));
  if (!changed) return;
  jwks = std::move(next);
  send_keys();
}

}  // namespace pilotfish
