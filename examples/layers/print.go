package main

import (
	"fmt"
	"os"
	"strings"
)

// printer writes the demo's report to stdout.
type printer struct{ n int }

func newPrinter() *printer { return &printer{} }

func (p *printer) title(s string) {
	fmt.Printf("%s\n%s\n\n", s, strings.Repeat("=", len(s)))
}

func (p *printer) section(s string) {
	p.n++
	h := fmt.Sprintf("%d. %s", p.n, s)
	fmt.Printf("%s\n%s\n\n", h, strings.Repeat("-", len(h)))
}

func (p *printer) sub(s string) { fmt.Printf("  %s:\n", s) }

func (p *printer) para(format string, a ...any) {
	for _, line := range strings.Split(fmt.Sprintf(format, a...), "\n") {
		fmt.Printf("  %s\n", line)
	}
	fmt.Println()
}

func (p *printer) lines(ls []string) {
	for _, l := range ls {
		fmt.Printf("      %s\n", l)
	}
	fmt.Println()
}

// table prints key: value pairs aligned.
func (p *printer) table(rows [][]string) {
	w := 0
	for _, r := range rows {
		w = max(w, len(r[0]))
	}
	for _, r := range rows {
		fmt.Printf("    %-*s  %s\n", w+1, r[0]+":", r[1])
	}
	fmt.Println()
}

// grid prints rows in aligned columns; the first row is the header.
func (p *printer) grid(rows [][]string) {
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for j, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i == 0 {
				fmt.Fprintf(&b, "%-*s", widths[i], c)
			} else {
				fmt.Fprintf(&b, "  %*s", widths[i], c)
			}
		}
		fmt.Fprintf(os.Stdout, "    %s\n", strings.TrimRight(b.String(), " "))
		if j == 0 || j == len(rows)-2 {
			sep := 0
			for _, w := range widths {
				sep += w + 2
			}
			fmt.Printf("    %s\n", strings.Repeat("-", sep-2))
		}
	}
	fmt.Println()
}
