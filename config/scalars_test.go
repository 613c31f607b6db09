package config

import (
	"strings"
	"testing"
	"time"
)

// parseCase is one input of a parser: the value it gives, or a part of its
// error ("" means success).
type parseCase[T comparable] struct {
	in   string
	want T
	err  string
}

// checkParse runs parse, called name in messages, over cases.
func checkParse[T comparable](t *testing.T, name string, parse func(string) (T, error), cases []parseCase[T]) {
	t.Helper()
	for _, tt := range cases {
		got, err := parse(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s(%q) = %v, %v; want error containing %q", name, tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s(%q) = %v, %v; want %v", name, tt.in, got, err, tt.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	checkParse(t, "ParseSize", ParseSize, []parseCase[Size]{
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
	})
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
	cases := []parseCase[time.Duration]{
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
	cases[16].want = time.Duration(1<<63 - 1)
	checkParse(t, "ParseDuration", ParseDuration, cases)
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
	checkParse(t, "ParseRate", ParseRate, []parseCase[Rate]{
		{"100/1m", Rate{100, time.Minute, 100}, ""},
		{"5000/24h", Rate{5000, 24 * time.Hour, 5000}, ""},
		{"100/1m burst 20", Rate{100, time.Minute, 20}, ""},
		{"14/1s", Rate{14, time.Second, 14}, ""},
		{"3/1m", Rate{3, time.Minute, 3}, ""}, // DESIGN §7: three at once
		{"10/s", Rate{10, time.Second, 10}, ""},
		{"3/m", Rate{3, time.Minute, 3}, ""},
		{"1000/d", Rate{1000, 24 * time.Hour, 1000}, ""},
		{" 100 / 1m  BURST 5 ", Rate{100, time.Minute, 5}, ""},
		{"unlimited", Rate{}, ""},
		{"100", Rate{}, "want N/DURATION"},
		{"0/1m", Rate{}, "at least 1"},
		{"x/1m", Rate{}, "at least 1"},
		{"10/0s", Rate{}, "period must be positive"},
		{"10/1x", Rate{}, `unknown unit "x"`},
		{"10/1m burst 0", Rate{}, "burst must be"},
		{"10/1m burst", Rate{}, "unknown unit"},
		{"", Rate{}, "want N/DURATION"},
	})
	// String spells a rate the one way.
	for in, want := range map[string]string{
		"100/1m":              "100/1m",
		"5000/24h":            "5000/1d",
		"100/1m burst 20":     "100/1m burst 20",
		"14/1s":               "14/1s",
		"3/1m":                "3/1m",
		"10/s":                "10/1s",
		"3/m":                 "3/1m",
		"1000/d":              "1000/1d",
		" 100 / 1m  BURST 5 ": "100/1m burst 5",
		"unlimited":           "unlimited",
	} {
		if r, err := ParseRate(in); err != nil || r.String() != want {
			t.Errorf("ParseRate(%q).String() = %q, %v; want %q", in, r.String(), err, want)
		}
	}
}

// fuzzParse fuzzes parse (called name) from seeds: whatever it accepts must
// pass check and parse back to itself from format's spelling.
func fuzzParse[T comparable](f *testing.F, name string, seeds []string, parse func(string) (T, error), format func(T) string, check func(t *testing.T, s string, v T)) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parse(s)
		if err != nil {
			return
		}
		check(t, s, v)
		back, err := parse(format(v))
		if err != nil || back != v {
			t.Fatalf("%s(%q) = %v; %q parses to %v, %v", name, s, v, format(v), back, err)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	fuzzParse(f, "ParseSize", []string{"0", "1024", "25MB", "25MiB", "1.5GB", "25 kib", "9223372036854775807"}, ParseSize, Size.String,
		func(t *testing.T, s string, v Size) {
			if v < 0 {
				t.Fatalf("ParseSize(%q) = %d: negative", s, v)
			}
		})
}

func FuzzParseDuration(f *testing.F) {
	fuzzParse(f, "ParseDuration", []string{"0", "30s", "5d", "1d12h", "1.5h", "-2m", "250ms", "1us"}, ParseDuration, FormatDuration,
		func(t *testing.T, s string, d time.Duration) {
			// Go syntax is a subset: where Go accepts, we agree.
			if gd, gerr := time.ParseDuration(s); gerr == nil && gd != d && !strings.Contains(s, "d") {
				t.Fatalf("ParseDuration(%q) = %v, time.ParseDuration = %v", s, d, gd)
			}
		})
}

func FuzzParseRate(f *testing.F) {
	fuzzParse(f, "ParseRate", []string{"100/1m", "5000/24h", "100/1m burst 20", "14/1s", "10/s", "3/m", "unlimited", "1/1.5d burst 7"}, ParseRate, Rate.String,
		func(t *testing.T, s string, r Rate) {
			if !r.Unlimited() && (r.N < 1 || r.Per <= 0 || r.Burst < 1) {
				t.Fatalf("ParseRate(%q) = %+v: out of range", s, r)
			}
		})
}
