package signing

import (
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"
)

func TestCheckRecord(t *testing.T) {
	t.Parallel()
	rsaKey := testRSA(t)
	ed := testEd25519()
	rsaTXT := TXTValue(rsaKey)
	edTXT := TXTValue(ed)
	pkcs1 := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey))
	other := TXTValue(testOtherEd25519())
	for _, tc := range []struct {
		name   string
		txts   []string
		pub    any
		state  string
		detail string
	}{
		{"rsa", []string{rsaTXT}, rsaKey.Public(), DNSOK, ""},
		{"rsa pkcs1", []string{pkcs1}, rsaKey.Public(), DNSOK, ""},
		{"rsa no k=", []string{strings.Replace(rsaTXT, "k=rsa; ", "", 1)}, rsaKey.Public(), DNSOK, ""},
		{"ed25519", []string{edTXT}, ed.Public(), DNSOK, ""},
		{"folded base64", []string{strings.Replace(edTXT, "p=", "p= ", 1)[:30] + " \t" + edTXT[29:]}, ed.Public(), DNSOK, ""},
		{"other record ignored", []string{"some verification token", edTXT}, ed.Public(), DNSOK, ""},
		{"none", nil, ed.Public(), DNSMissing, "no TXT record"},
		{"other key", []string{other}, ed.Public(), DNSMismatch, "different Ed25519 key"},
		{"wrong k", []string{edTXT}, rsaKey.Public(), DNSMismatch, "k=ed25519, want k=rsa"},
		{"revoked", []string{"v=DKIM1; k=ed25519; p="}, ed.Public(), DNSMismatch, "revoked"},
		{"two records", []string{edTXT, other}, ed.Public(), DNSMismatch, "2 DKIM key records"},
		{"unparsable", []string{"v=DKIM1; k=ed25519; p"}, ed.Public(), DNSMismatch, "unparsable"},
		{"v not first", []string{"k=ed25519; v=DKIM1; p=x"}, ed.Public(), DNSMismatch, "unparsable"},
		{"not base64", []string{"v=DKIM1; k=ed25519; p=!!"}, ed.Public(), DNSMismatch, "not base64"},
		{"h=sha1", []string{"v=DKIM1; h=sha1; k=ed25519; p=" + edTXT[len("v=DKIM1; k=ed25519; p="):]}, ed.Public(), DNSMismatch, "h=sha1"},
		{"s=*", []string{"v=DKIM1; s=*; k=ed25519; p=" + edTXT[len("v=DKIM1; k=ed25519; p="):]}, ed.Public(), DNSOK, ""},
	} {
		st, detail := CheckRecord(tc.txts, tc.pub)
		if st != tc.state || !strings.Contains(detail, tc.detail) {
			t.Errorf("%s: %s %q, want %s %q", tc.name, st, detail, tc.state, tc.detail)
		}
	}
}

func testOtherEd25519() any {
	k, _ := GenerateKey("ed25519", 0)
	return k
}

func FuzzParseRecord(f *testing.F) {
	f.Add(TXTValue(testEd25519()))
	f.Add("v=DKIM1; k=rsa; h=sha256; s=email; t=y:s; p=MIIB;")
	f.Add("v=DKIM1;;p=")
	f.Add(" k = ed25519 ; p = a b c ")
	f.Fuzz(func(t *testing.T, txt string) {
		r, err := ParseRecord(txt)
		if err != nil {
			return
		}
		// Formatting and parsing again gives the same record.
		r2, err := ParseRecord(r.String())
		if err != nil {
			t.Fatalf("reparse of %q (from %q): %v", r.String(), txt, err)
		}
		if r2.String() != r.String() {
			t.Fatalf("round trip: %q -> %q", r.String(), r2.String())
		}
		for _, tag := range r.Tags {
			if !validTagName(tag.Name) || strings.TrimSpace(tag.Value) != tag.Value {
				t.Fatalf("tag %+v not normalised", tag)
			}
		}
		CheckRecord([]string{txt}, testEd25519().Public()) // never panics
	})
}
