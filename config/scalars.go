package config

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// Size units. The decimal ones are powers of 1000 and the binary ones powers
// of 1024 (DESIGN §7); a bare K, M or G is refused because it is ambiguous.
var sizeUnits = []struct {
	name string
	n    int64
}{
	{"TiB", 1 << 40}, {"TB", 1e12},
	{"GiB", 1 << 30}, {"GB", 1e9},
	{"MiB", 1 << 20}, {"MB", 1e6},
	{"KiB", 1 << 10}, {"KB", 1e3},
	{"B", 1},
}

// ParseSize parses a byte count: a plain integer ("1024"), or a number with a
// unit ("25MB" = 25·10⁶, "25MiB" = 25·2²⁰, "1.5GB"). The unit's case is not
// significant and a space may stand before it; the result must be a whole
// number of bytes that fits in an int64.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	if num == "" || strings.Count(num, ".") > 1 || num[0] == '.' || num[len(num)-1] == '.' {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (KB, MB, GB, KiB, MiB, GiB)", s)
	}
	mult := int64(1)
	if unit != "" {
		found := false
		for _, u := range sizeUnits {
			if strings.EqualFold(unit, u.name) {
				mult, found = u.n, true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("size %q: unknown unit %q (use KB, MB, GB for powers of 1000, KiB, MiB, GiB for powers of 1024)", s, unit)
		}
	}
	// Exact decimal arithmetic: "1.5KB" is 1500 bytes, "1.5B" is an error.
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("size %q: bad number %q", s, num)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("size %q: not a whole number of bytes", s)
	}
	n := r.Num()
	if !n.IsInt64() {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return Size(n.Int64()), nil
}

// String formats s with the unit that gives the smallest whole number
// ("25MB", "25MiB"; "1536" stays a plain number because no unit divides it
// into a smaller one), so that ParseSize(s.String()) == s.
func (s Size) String() string {
	if s <= 0 {
		return strconv.FormatInt(int64(s), 10)
	}
	best, bestUnit := int64(s), ""
	for _, u := range sizeUnits {
		if u.n > 1 && int64(s)%u.n == 0 && int64(s)/u.n < best {
			best, bestUnit = int64(s)/u.n, u.name
		}
	}
	return strconv.FormatInt(best, 10) + bestUnit
}

// durationUnits are Go's units plus d (24h); the order is for formatting.
var durationUnits = []struct {
	name string
	d    time.Duration
}{
	{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second},
	{"ms", time.Millisecond}, {"us", time.Microsecond}, {"ns", time.Nanosecond},
}

// ParseDuration parses Go duration syntax ("30s", "1h30m", "1.5h") plus d for
// days of 24 hours ("5d", "1d12h").
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	neg := false
	if t != "" && (t[0] == '-' || t[0] == '+') {
		neg = t[0] == '-'
		t = t[1:]
	}
	if t == "0" {
		return 0, nil
	}
	if t == "" {
		return 0, fmt.Errorf("duration %q: empty", s)
	}
	var total time.Duration
	for t != "" {
		i := 0
		for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
			i++
		}
		num := t[:i]
		t = t[i:]
		j := 0
		for j < len(t) && !(t[j] >= '0' && t[j] <= '9' || t[j] == '.') {
			j++
		}
		unit := t[:j]
		t = t[j:]
		if num == "" {
			return 0, fmt.Errorf("duration %q: want a number before %q", s, unit)
		}
		if unit == "" {
			return 0, fmt.Errorf("duration %q: missing unit after %s (use s, m, h, d, ...)", s, num)
		}
		var part time.Duration
		var err error
		if unit == "d" {
			// A day is 24h; parse the number as hours and scale it, so
			// fractions ("1.5d") work exactly as they do for "h".
			part, err = time.ParseDuration(num + "h")
			if err == nil {
				if part > math.MaxInt64/24 {
					return 0, fmt.Errorf("duration %q: too large", s)
				}
				part *= 24
			}
		} else {
			part, err = time.ParseDuration(num + unit)
		}
		if err != nil {
			if strings.Contains(err.Error(), "unknown unit") {
				return 0, fmt.Errorf("duration %q: unknown unit %q (use ns, us, ms, s, m, h, d)", s, strings.TrimSpace(unit))
			}
			if _, ferr := strconv.ParseFloat(num, 64); ferr == nil {
				return 0, fmt.Errorf("duration %q: too large", s) // Go's only other failure
			}
			return 0, fmt.Errorf("duration %q: bad value %q", s, num+unit)
		}
		if total > math.MaxInt64-part {
			return 0, fmt.Errorf("duration %q: too large", s)
		}
		total += part
	}
	if neg {
		total = -total
	}
	return total, nil
}

// FormatDuration formats d compactly with whole-number components, days
// included ("5d", "1d12h", "1m30s", "250ms"); ParseDuration reads it back exactly.
func FormatDuration(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	var b strings.Builder
	u := uint64(d)
	if d < 0 {
		b.WriteByte('-')
		u = -u // two's complement: correct even for math.MinInt64
	}
	for _, unit := range durationUnits {
		if n := u / uint64(unit.d); n > 0 {
			b.WriteString(strconv.FormatUint(n, 10))
			b.WriteString(unit.name)
			u -= n * uint64(unit.d)
		}
	}
	return b.String()
}

// ParseRate parses "N/DURATION" with an optional " burst B": "100/1m",
// "5000/24h", "100/1m burst 20", "14/1s". The duration may be a bare unit
// ("10/s", "3/m", "1000/d"). The burst defaults to N (DESIGN §7: "3/1m" allows
// three at once, then one every 20 s). "unlimited" is the zero Rate.
func ParseRate(s string) (Rate, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "unlimited") {
		return Rate{}, nil
	}
	fields := strings.Fields(t)
	var r Rate
	spec := t
	if len(fields) >= 2 && strings.EqualFold(fields[len(fields)-2], "burst") {
		b, err := strconv.Atoi(fields[len(fields)-1])
		if err != nil || b < 1 {
			return Rate{}, fmt.Errorf("rate %q: burst must be a whole number of at least 1", s)
		}
		r.Burst = b
		spec = strings.Join(fields[:len(fields)-2], "")
	} else {
		spec = strings.Join(fields, "")
	}
	n, per, ok := strings.Cut(spec, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/DURATION, e.g. 100/1m or 100/1m burst 20", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 {
		return Rate{}, fmt.Errorf("rate %q: count %q must be a whole number of at least 1", s, n)
	}
	if per != "" && (per[0] < '0' || per[0] > '9') && per[0] != '.' {
		per = "1" + per // "10/s" means 10 per 1s
	}
	d, err := ParseDuration(per)
	if err != nil {
		return Rate{}, fmt.Errorf("rate %q: %w", s, err)
	}
	if d <= 0 {
		return Rate{}, fmt.Errorf("rate %q: the period must be positive", s)
	}
	r.N, r.Per = count, d
	if r.Burst == 0 {
		r.Burst = count
	}
	return r, nil
}

// String formats r so that ParseRate reads it back: "100/1m", "100/1m burst
// 20" (the burst only when it differs from N), "unlimited" for the zero Rate.
func (r Rate) String() string {
	if r.Unlimited() {
		return "unlimited"
	}
	s := strconv.Itoa(r.N) + "/" + FormatDuration(r.Per)
	if r.Burst != r.N {
		s += " burst " + strconv.Itoa(r.Burst)
	}
	return s
}
