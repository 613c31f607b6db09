package queue

import "testing"

func BenchmarkSpaceCheck(b *testing.B) {
	opts, _ := testOptions(b, b.TempDir(), &fakeUpstream{})
	opts.MinFreeSpace = 1
	q, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	b.Run("statfs", func(b *testing.B) {
		for b.Loop() {
			q.checkSpace()
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			q.checkSpaceCached()
		}
	})
}
