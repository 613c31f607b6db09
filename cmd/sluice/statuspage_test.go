package main

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

// chromium returns the headless browser, or skips the test outside CI
// when it is not installed (.ci/run installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (CI installs it in .ci/run)")
	}
	t.Skip("chromium not installed")
	return ""
}

// browse runs headless chromium on u with extra flags (--dump-dom,
// --screenshot=…) and returns its standard output.
func browse(t *testing.T, bin, u string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-extensions", "--no-first-run", "--hide-scrollbars", "--user-data-dir=" + t.TempDir()}, flags...)
	cmd := exec.CommandContext(ctx, bin, append(args, u)...)
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v %s: %v", flags, u, err)
	}
	return string(out)
}

// TestStatusPage drives the status page in a real headless browser: 401
// without credentials; with them the upstreams and the queue count; a
// subject and an upstream reply carrying <script>, and a sender carrying
// & ' ", are shown as text; the
// search shows a trace; a screenshot is taken (SLUICE_SCREENSHOT_DIR keeps
// it, for docs/status-page.png).
func TestStatusPage(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	d := launch(t, baseWith(func(port int) string { return upstreamYAML(port, testsmtp.ClosedPort(t)) }),
		edited("queue:\n", "http:\n  address: 127.0.0.1:0\n  status: true\n  status_users:\n    admin: \"{{HASH}}\"\nqueue:\n"),
		edited(`allowed_senders: ["*@example.com"]`, `allowed_senders: ["*@example.com", "*@evil.example"]`),
		edited("retry: [300ms]", "retry: [10m]"), // later@ waits, its events do not flood the page
		failRcpt("later@example.org", 451, [3]int{4, 2, 2}, "mailbox full, try later"),
		failRcpt("gone@example.org", 550, [3]int{5, 1, 1}, "<script>alert('reply')</script> no such user"))
	addr := d.httpAddr()

	for i, to := range []string{"a@example.org", "b@example.org", "gone@example.org", "later@example.org", "c@example.org"} {
		if _, err := send(d.addrs["submission"], d.tlsConfig(), "app", "app@example.com", []string{to}, message("app@example.com", to, "sp"+string(rune('a'+i)), "status")); err != nil {
			t.Fatal(err)
		}
	}
	// The relay refuses < and > in an address (553 5.1.7), so the sender
	// carries the other characters HTML cares about.
	const evilFrom = `"x&y'z\"q"@evil.example`
	evil := "From: <app@example.com>\r\nTo: <x@example.org>\r\nSubject: <script>alert('subject')</script>\r\nMessage-ID: <evil@evil.example>\r\n\r\nhi\r\n"
	evilID, err := send(d.addrs["submission"], d.tlsConfig(), "app", evilFrom, []string{"x@example.org"}, evil)
	if err != nil {
		t.Fatalf("sender with <script>: %v", err)
	}
	// a, b, c, the bounce of gone@ and the evil sender's message (its
	// quoted sender now goes upstream quoted, so it is delivered).
	d.up.WaitMessages(t, 5, 20*time.Second)
	waitFor(t, 20*time.Second, "one message left queued", func() bool {
		out, _, _ := runCmd(t, "", "queue", "list", "--json", "--state-dir", filepath.Join(d.dir, "state"))
		return strings.Count(strings.TrimSpace(out), "\n") == 0 && strings.Contains(out, "later@example.org")
	})

	// Without credentials, or with a wrong password: 401 and nothing of the page.
	for _, u := range []string{"http://" + addr + "/", "http://admin:wrong@" + addr + "/", "http://" + addr + "/trace?q=a@example.org"} {
		req, _ := http.NewRequest("GET", u, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("GET %s: %d %q, want 401 with a Basic challenge", u, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	if dom := browse(t, bin, "http://"+addr+"/", "--dump-dom"); strings.Contains(dom, "queue-count") || strings.Contains(dom, "up1") {
		t.Errorf("the page was shown without credentials:\n%s", dom)
	}

	base := "http://" + url.UserPassword("admin", password).String() + "@" + addr
	dom := browse(t, bin, base+"/", "--dump-dom")
	for _, want := range []string{
		`<b id="queue-count">1</b>`, // later@ waits for a retry
		">up1<", ">up2<", `class="pill closed"`,
		"<svg", `<rect class="delivered"`, "delivered 5", // the chart and its legend: a, b, c, the report and the evil sender's
		`"x&amp;y'z\"q"@evil.example`,                              // the sender, as text, quoted as it was checked
		"&lt;script&gt;alert('reply')&lt;/script&gt; no such user", // an upstream's reply
		"mailbox full, try later",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(dom, "<script") {
		t.Errorf("a <script> element reached the page:\n%s", dom)
	}

	// The search box: the trace of the <script> message, its subject as text.
	tr := browse(t, bin, base+"/trace?q="+url.QueryEscape("<evil@evil.example>"), "--dump-dom")
	for _, want := range []string{evilID, "&lt;script&gt;alert('subject')&lt;/script&gt;", `"x&amp;y'z\"q"@evil.example`, ">accepted<"} {
		if !strings.Contains(tr, want) {
			t.Errorf("trace page lacks %q", want)
		}
	}
	if strings.Contains(tr, "<script") {
		t.Errorf("a <script> element reached the trace page")
	}
	if tr := browse(t, bin, base+"/trace?q=nobody@example.org", "--dump-dom"); !strings.Contains(tr, "No message in the journal matches") {
		t.Errorf("empty search: no 'no message' line")
	}

	// Screenshots, desktop and phone width.
	dir := os.Getenv("SLUICE_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	for _, s := range []struct{ name, size string }{{"status-page.png", "1200,1500"}, {"status-page-phone.png", "390,1800"}} {
		file := filepath.Join(dir, s.name)
		browse(t, bin, base+"/", "--screenshot="+file, "--window-size="+s.size)
		st, err := os.Stat(file)
		if err != nil || st.Size() < 10000 {
			t.Errorf("screenshot %s: %v (%d bytes)", s.name, err, st.Size())
		}
	}
}
