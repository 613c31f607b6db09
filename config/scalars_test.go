package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Size
		err  string // substring of the error; "" means success
	}{
		{"0", 0, ""},
		{"1024", 1024, ""},
		{"25MB", 25_000_000, ""},
		{"25MiB", 25 << 20, ""},
		{"25mb", 25_000_000, ""},
		{"25mib", 25 << 20, ""},
		{"25 MB", 25_000_000, ""},
		{"100KB", 100_000, ""},
		{"100KiB", 102_400, ""},
		{"1GB", 1_000_000_000, ""},
		{"1GiB", 1 << 30, ""},
		{"2TiB", 2 << 40, ""},
		{"1.5KB", 1500, ""},
		{"0.5MiB", 512 << 10, ""},
		{"512B", 512, ""},
		{"25M", 0, `unknown unit "M"`}, // ambiguous: refused
		{"25K", 0, `unknown unit "K"`},
		{"25XB", 0, `unknown unit "XB"`},
		{"1.5B", 0, "not a whole number of bytes"},
		{"", 0, "want a number"},
		{"MB", 0, "want a number"},
		{"-5MB", 0, "want a number"},
		{"1..5MB", 0, "want a number"},
		{"9999999999GB", 0, "too large"},
		{"9223372036854775808", 0, "too large"},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseSize(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestSizeString(t *testing.T) {
	t.Parallel()
	for in, want := range map[Size]string{
		0:                "0",
		25_000_000:       "25MB",
		25 << 20:         "25MiB",
		1536:             "1536",
		1_000_000_000:    "1GB",
		1_024_000:        "1000KiB",
		100_000:          "100KB",
		7:                "7",
		3 * (1 << 40):    "3TiB",
		1_000_000_000_00: "100GB",
	} {
		if got := in.String(); got != want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(in), got, want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"0", 0, ""},
		{"30s", 30 * time.Second, ""},
		{"5m", 5 * time.Minute, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"5d", 5 * 24 * time.Hour, ""},
		{"1d12h", 36 * time.Hour, ""},
		{"1.5d", 36 * time.Hour, ""},
		{"250ms", 250 * time.Millisecond, ""},
		{"-1d", -24 * time.Hour, ""},
		{"12h1d", 36 * time.Hour, ""},
		{"5", 0, "missing unit"},
		{"5x", 0, `unknown unit "x"`},
		{"d", 0, "want a number"},
		{"", 0, "empty"},
		{"1.2.3s", 0, "bad value"},
		{"200000000d", 0, "too large"},
		{"106751d23h47m16s854775807ns", 0, ""}, // filled in below: the maximum
		{"106751d23h47m16s854775808ns", 0, "too large"},
	}
	tests[16].want = time.Duration(1<<63 - 1)
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseDuration(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	t.Parallel()
	for in, want := range map[time.Duration]string{
		0:                             "0s",
		5 * 24 * time.Hour:            "5d",
		36 * time.Hour:                "1d12h",
		90 * time.Second:              "1m30s",
		250 * time.Millisecond:        "250ms",
		-time.Minute:                  "-1m",
		time.Second + time.Nanosecond: "1s1ns",
	} {
		if got := FormatDuration(in); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Rate
		str  string // String() of the result
		err  string
	}{
		{"100/1m", Rate{100, time.Minute, 100}, "100/1m", ""},
		{"5000/24h", Rate{5000, 24 * time.Hour, 5000}, "5000/1d", ""},
		{"100/1m burst 20", Rate{100, time.Minute, 20}, "100/1m burst 20", ""},
		{"14/1s", Rate{14, time.Second, 14}, "14/1s", ""},
		{"3/1m", Rate{3, time.Minute, 3}, "3/1m", ""}, // DESIGN §7: three at once
		{"10/s", Rate{10, time.Second, 10}, "10/1s", ""},
		{"3/m", Rate{3, time.Minute, 3}, "3/1m", ""},
		{"1000/d", Rate{1000, 24 * time.Hour, 1000}, "1000/1d", ""},
		{" 100 / 1m  BURST 5 ", Rate{100, time.Minute, 5}, "100/1m burst 5", ""},
		{"unlimited", Rate{}, "unlimited", ""},
		{"100", Rate{}, "", "want N/DURATION"},
		{"0/1m", Rate{}, "", "at least 1"},
		{"x/1m", Rate{}, "", "at least 1"},
		{"10/0s", Rate{}, "", "period must be positive"},
		{"10/1x", Rate{}, "", `unknown unit "x"`},
		{"10/1m burst 0", Rate{}, "", "burst must be"},
		{"10/1m burst", Rate{}, "", "unknown unit"},
		{"", Rate{}, "", "want N/DURATION"},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseRate(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseRate(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if s := got.String(); s != tt.str {
			t.Errorf("ParseRate(%q).String() = %q, want %q", tt.in, s, tt.str)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "1024", "25MB", "25MiB", "1.5GB", "25 kib", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			return
		}
		if v < 0 {
			t.Fatalf("ParseSize(%q) = %d: negative", s, v)
		}
		back, err := ParseSize(v.String())
		if err != nil || back != v {
			t.Fatalf("ParseSize(%q) = %d; String %q parses to %d, %v", s, v, v.String(), back, err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"0", "30s", "5d", "1d12h", "1.5h", "-2m", "250ms", "1us"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		// Go syntax is a subset: where Go accepts, we agree.
		if gd, gerr := time.ParseDuration(s); gerr == nil && gd != d && !strings.Contains(s, "d") {
			t.Fatalf("ParseDuration(%q) = %v, time.ParseDuration = %v", s, d, gd)
		}
		back, err := ParseDuration(FormatDuration(d))
		if err != nil || back != d {
			t.Fatalf("ParseDuration(%q) = %v; FormatDuration %q parses to %v, %v", s, d, FormatDuration(d), back, err)
		}
	})
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"100/1m", "5000/24h", "100/1m burst 20", "14/1s", "10/s", "3/m", "unlimited", "1/1.5d burst 7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			return
		}
		if !r.Unlimited() && (r.N < 1 || r.Per <= 0 || r.Burst < 1) {
			t.Fatalf("ParseRate(%q) = %+v: out of range", s, r)
		}
		back, err := ParseRate(r.String())
		if err != nil || back != r {
			t.Fatalf("ParseRate(%q) = %+v; String %q parses to %+v, %v", s, r, r.String(), back, err)
		}
	})
}
