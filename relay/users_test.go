package relay

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
)

// TestUsersCheck: right and wrong passwords, unknown users, and many
// identical logins at once (they share one hash check) all get the right answer.
func TestUsersCheck(t *testing.T) {
	t.Parallel()
	u := newUsers([]config.User{{Name: "alice", PasswordHash: testHash, Policy: "default"}}, time.Now)
	var wg sync.WaitGroup
	results := make([]bool, 40)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw := testPassword
			if i%2 == 1 {
				pw = "wrong"
			}
			_, results[i] = u.check("alice", pw)
		}()
	}
	wg.Wait()
	for i, ok := range results {
		if ok != (i%2 == 0) {
			t.Errorf("login %d: ok = %v", i, ok)
		}
	}
	if _, ok := u.check("mallory", testPassword); ok {
		t.Error("unknown user accepted")
	}
	if usr, ok := u.check("alice", testPassword); !ok || usr.Policy != "default" {
		t.Errorf("cached login: %v %+v", ok, usr)
	}
	// A changed password misses the cache.
	u2 := newUsers([]config.User{{Name: "alice", PasswordHash: "$2a$10$abcdefghijklmnopqrstuu5D3f1g9p0Ns9I8nB5q2Qf6Xo4xPq9a2"}}, time.Now)
	if _, ok := u2.check("alice", testPassword); ok {
		t.Error("old password accepted after the hash changed")
	}
}

// TestUsersCheckFreesArgon2Memory: an argon2id check leaves no 19 MiB of
// garbage in the heap. Without the collection after it, what the sessions
// allocate next piles on top of it up to the GC's goal, and that was the
// bench's peak RSS (64–66 MB against the 64 MB target; 49 MB with it).
// Not parallel: other tests' allocations would move HeapAlloc.
func TestUsersCheckFreesArgon2Memory(t *testing.T) {
	u := newUsers([]config.User{{Name: "alice", PasswordHash: testHash, Policy: "default"}}, time.Now)
	if _, ok := u.check("alice", testPassword); !ok {
		t.Fatal("login refused")
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc >= 16<<20 {
		t.Errorf("heap after an argon2id check: %d MiB allocated, want the check's 19 MiB collected", ms.HeapAlloc>>20)
	}
}
