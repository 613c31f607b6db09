package saslogin

import (
	"errors"
	"testing"
)

func TestServer(t *testing.T) {
	t.Parallel()
	errBad := errors.New("bad")
	check := func(u, p string) error {
		if u != "alice" || p != "pw" {
			return errBad
		}
		return nil
	}
	type step struct {
		resp []byte
		want string
		done bool
		err  error
	}
	for _, tc := range []struct {
		name  string
		s     *Server
		steps []step
	}{
		{"prompts", &Server{Auth: check}, []step{{nil, "Username:", false, nil}, {[]byte("alice"), "Password:", false, nil}, {[]byte("pw"), "", true, nil}}},
		{"initial response", &Server{Auth: check}, []step{{[]byte("alice"), "Password:", false, nil}, {[]byte("nope"), "", true, errBad}}},
		{"own prompts", &Server{Prompts: [2]string{"VXNlcm5hbWU6", "UGFzc3dvcmQ6"}, Auth: check}, []step{{nil, "VXNlcm5hbWU6", false, nil}, {[]byte("alice"), "UGFzc3dvcmQ6", false, nil}}},
		{"user vetted", &Server{User: func(string) error { return errBad }, Auth: check}, []step{{[]byte("alice"), "", false, errBad}}},
	} {
		for i, st := range tc.steps {
			c, done, err := tc.s.Next(st.resp)
			if string(c) != st.want || done != st.done || err != st.err {
				t.Errorf("%s: step %d = %q %v %v, want %q %v %v", tc.name, i, c, done, err, st.want, st.done, st.err)
			}
		}
	}
}
