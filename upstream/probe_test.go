package upstream

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

func TestProbe(t *testing.T) {
	t.Parallel()
	srv := testsmtp.Start(t, testsmtp.Options{TLS: testsmtp.TLSStartTLS, Username: "u", Password: "right"})
	closed := testsmtp.ClosedPort(t)
	u := config.Upstream{Name: "p", Host: "127.0.0.1", Ports: []int{srv.Port(), closed}, TLS: config.TLSStartTLS,
		TLSCAFile: srv.CAFile(), Username: "u", Password: "right", Timeout: 2 * time.Second, ConnectTimeout: 2 * time.Second}.WithDefaults()
	opts := Options{Hostname: "relay.example.com", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	res, err := Probe(context.Background(), opts, u)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Err != nil || res[0].TLS == nil || res[1].Err == nil || res[1].Err.Stage != StageDial {
		t.Fatalf("probe: %+v", res)
	}
	u.Password = "wrong"
	u.Ports = []int{srv.Port()}
	res, _ = Probe(context.Background(), opts, u)
	if res[0].Err == nil || res[0].Err.Stage != StageAuth || res[0].Err.Code != 535 {
		t.Fatalf("wrong password: %+v", res[0].Err)
	}
	u.TLSCAFile = ""
	u.Password = "right"
	res, _ = Probe(context.Background(), opts, u)
	if res[0].Err == nil || res[0].Err.Stage != StageTLS {
		t.Fatalf("unverifiable certificate: %+v", res[0].Err)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("probe sent %d messages", n)
	}
}
