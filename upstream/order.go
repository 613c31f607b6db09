package upstream

import "sort"

// order arranges a route's upstreams for one delivery: by priority (lower
// first), and within one priority in a weighted random order: each place
// drawn with probability proportional to weight among those not yet drawn.
// intn(n) returns a uniform value in [0, n).
func order(set []*upstream, intn func(int) int) {
	sort.SliceStable(set, func(i, j int) bool { return set[i].cfg.Priority < set[j].cfg.Priority })
	for i := 0; i < len(set); {
		j := i
		for j < len(set) && set[j].cfg.Priority == set[i].cfg.Priority {
			j++
		}
		drawByWeight(set[i:j], intn)
		i = j
	}
}

func drawByWeight(group []*upstream, intn func(int) int) {
	for k := range group {
		total := 0
		for _, u := range group[k:] {
			total += max(u.cfg.Weight, 1)
		}
		r := intn(total)
		for l := k; l < len(group); l++ {
			r -= max(group[l].cfg.Weight, 1)
			if r < 0 {
				group[k], group[l] = group[l], group[k]
				break
			}
		}
	}
}
