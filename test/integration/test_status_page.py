#!/usr/bin/env python3
"""The status page (issue 19): GET / on the admin listener, loaded in a real browser (Debian's
headless Chromium through chromedriver and Selenium). It shows the listeners and routes, the
clusters with each endpoint's health, the certificate's expiry, the golden signals and the policy
history; it refreshes itself, so an ejection and a reload caused after it loaded appear on it; text
from the policy is shown as text, never run as markup; and it loads with no console error (its own
content security policy, which allows only its inline script and style, included)."""
import json
import os
import shutil
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

from selenium import webdriver  # noqa: E402  (Debian's python3-selenium)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def browser(profile_dir):
    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, "chromium and chromium-driver are test dependencies (scripts/install-deps.sh test)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--user-data-dir=" + profile_dir):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


class StatusPageTest(unittest.TestCase):
    def setUp(self):
        self.dir = h.make_tmpdir("pf-page-")
        pki = h.Pki(os.path.join(self.dir, "pki"))
        cert, key = pki.leaf("page", uris=["spiffe://test.local/ns/test/sa/page"])
        self.app = h.Upstream("echo", name="app")
        self.addCleanup(self.app.stop)
        self.dead = "127.0.0.1:%d" % h.free_port()  # refuses connections: ejected after 3 in a row
        self.routes = [
            {"name": "api", "match": {"path_prefix": "/api/"}, "cluster": "app"},
            # Markup in a policy value: shown as text, never parsed.
            {"name": "odd", "match": {"path_prefix": "/<b/id=injected>x</b>"}, "cluster": "app"},
            {"name": "web", "cluster": "app"}]
        self.policy = h.simple_policy([self.app.address, self.dead], routes=self.routes, cluster={
            "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "120s"},
            "retry": {"retries": 2, "on": ["connect-failure"], "backoff": {"base": "1ms", "max": "1ms"}}})
        self.policy["identity"] = {"cert": cert, "key": key, "ca": pki.cert}
        self.pf = h.Pilotfish(self.policy)
        self.addCleanup(self.pf.kill)
        self.driver = browser(os.path.join(self.dir, "profile"))
        self.addCleanup(self.driver.quit)
        self.url = "http://127.0.0.1:%d/" % h.admin_port(self.pf)

    def refreshes(self):
        return int(self.driver.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed") or 0)

    def wait_page(self, pred, what, timeout=20):
        """pred() on the page as it refreshes itself (never reloaded by the test)."""
        return h.wait_for(pred, timeout, interval=0.2, what=what)

    def text(self, element_id):
        return self.driver.find_element(By.ID, element_id).text

    def test_the_page_shows_the_sidecar_and_follows_it(self):
        status, headers, body = h.admin_request(self.pf, "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        csp = headers["content-security-policy"]
        self.assertIn("default-src 'none'", csp)
        self.assertRegex(csp, r"script-src 'sha256-[A-Za-z0-9+/]{43}='")
        self.assertNotIn("http://", body)  # no external assets
        self.assertNotIn("https://", body)
        self.assertLess(len(body), 32 * 1024)

        self.driver.get(self.url)
        self.wait_page(lambda: self.refreshes() >= 1, "the page's first refresh")
        self.assertEqual(self.driver.title, "pilotfish")
        self.assertIn("policy version 1", self.text("policy"))
        listeners = self.text("listeners")
        self.assertIn("ingress", listeners)
        for name in ("api", "odd", "web"):
            self.assertIn(name, listeners)
        self.assertIn("<b/id=injected>x</b>", listeners)  # as text
        self.assertEqual(self.driver.find_elements(By.ID, "injected"), [])
        certs = self.text("certs")
        self.assertIn("identity", certs)
        self.assertIn("ca", certs)
        days = [float(x) for x in certs.split() if x.replace(".", "", 1).isdigit()]
        self.assertTrue(any(28 < d <= 30.1 for d in days), certs)
        self.assertIn("startup applied", self.text("history"))

        # Traffic: the golden signals show the route.
        with h.Client(self.pf.port()) as c:
            for _ in range(40):
                self.assertEqual(c.request(target="/api/x").status, 200)
        self.wait_page(lambda: "api" in self.text("signals") and "100.0%" in self.text("signals"),
                       "the api route in the golden signals")

        # An ejection: the dead endpoint fails three connects in a row (retried on the live one).
        with h.Client(self.pf.port()) as c:
            for _ in range(12):
                self.assertEqual(c.request(target="/web").status, 200)
        _, doc, _ = h.admin_json(self.pf, "/clusters")
        health = {e["address"]: e["health"] for e in doc["clusters"][0]["endpoints"]}
        self.assertEqual(health, {self.app.address: "ok", self.dead: "ejected"})

        def ejected_on_page():
            row = self.driver.find_element(By.CSS_SELECTOR, 'tr[data-endpoint="%s"]' % self.dead)
            return "ejected" in row.text and "T" in row.find_elements(By.TAG_NAME, "td")[2].text
        self.wait_page(ejected_on_page, "the ejected endpoint on the page")
        ok_row = self.driver.find_element(By.CSS_SELECTOR, 'tr[data-endpoint="%s"]' % self.app.address)
        self.assertIn("ok", ok_row.text)
        self.assertIn("ejected now: 1", self.text("clusters"))

        # A reload: a new route; the page shows version 2 and its change.
        self.policy["listeners"][0]["routes"] = [{"name": "added", "match": {"path_prefix": "/new/"}, "cluster": "app"}] + \
            self.routes
        h.write_policy(self.pf, self.policy)
        h.wait_for(lambda: h.admin_json(self.pf, "/config")[1]["version"] == 2, 15, what="the reload applied")
        self.wait_page(lambda: "policy version 2" in self.text("policy") and "added" in self.text("listeners"),
                       "the reload on the page")
        newest = self.driver.find_elements(By.CSS_SELECTOR, "#history tr")[1].text
        self.assertIn("applied", newest)
        self.assertIn("added", newest)
        self.assertEqual(self.text("banner"), "")  # hidden: every fetch answered

        # The page ran without a console error (a CSP violation would be one).
        errors = [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        self.assertEqual(errors, [])
        self.pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
