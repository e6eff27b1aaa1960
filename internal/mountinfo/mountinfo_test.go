package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:             "/plain",
		`/a\040b`:            "/a b",
		`/tab\011x\012y`:     "/tab\tx\ny",
		`/back\134slash`:     `/back\slash`,
		`/not\99escape`:      `/not\99escape`,
		`/short\04`:          `/short\04`,
		`/x\040y\040\040end`: "/x y  end",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
