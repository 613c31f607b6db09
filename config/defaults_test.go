package config

import (
	"reflect"
	"testing"
	"time"
)

func TestStrictestProfile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{nil, ProfileGeneric},
		{[]string{""}, ProfileGeneric},
		{[]string{ProfileGeneric, ProfileSendGrid}, ProfileSendGrid},
		{[]string{ProfileSendGrid, ProfileSES, ProfileGeneric}, ProfileSES},
		{[]string{ProfileSES, ProfileMailgun}, ProfileSES},
		{[]string{ProfileSendGrid, ProfileMailgun}, ProfileMailgun},
		{[]string{ProfilePostmark, ProfileMailgun}, ProfilePostmark},
		{[]string{"bogus"}, ProfileGeneric},
	} {
		if got := StrictestProfile(tc.in); got != tc.want {
			t.Errorf("StrictestProfile(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestUpstreamDefaultsOnePlace: an upstream built in code gets exactly the
// defaults the loader gives one read from a file; starttls-optional takes
// port 25, as docs/configuration.md says (the upstream package once said 587).
func TestUpstreamDefaultsOnePlace(t *testing.T) {
	t.Parallel()
	c, err := parse(t, nil, nil, base)
	if err != nil {
		t.Fatal(err)
	}
	loaded := c.Upstreams[0]
	built := Upstream{Name: loaded.Name, Host: loaded.Host}.WithDefaults()
	if !reflect.DeepEqual(loaded, built) {
		t.Errorf("loaded %+v\nbuilt  %+v", loaded, built)
	}
	opt := Upstream{Name: "x", Host: "h", TLS: TLSStartTLSOptional}.WithDefaults()
	if !reflect.DeepEqual(opt.Ports, []int{25}) || opt.Weight != 1 || opt.MaxConnections != 10 ||
		opt.BreakerBackoff != 30*time.Second || opt.Timeout != time.Minute || opt.ConnectTimeout != 15*time.Second {
		t.Errorf("starttls-optional defaults: %+v", opt)
	}
}
