// The `go` workload of `cargo xtask bench`: a net/http service that, for
// each request to /front, calls its own /back over a keep-alive client
// connection and hands the body to a new goroutine and back over a channel.
// So every request runs each goroutine probe: a goroutine switch, a new
// goroutine, and channel sends to waiting goroutines (net/http's own and
// this one's).
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	port := os.Args[1]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	http.HandleFunc("/back", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "back")
	})
	http.HandleFunc("/front", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get("http://127.0.0.1:" + port + "/back")
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done := make(chan string)
		go func() { done <- string(body) }()
		io.WriteString(w, <-done)
	})
	fmt.Println("READY")
	if err := http.ListenAndServe("127.0.0.1:"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
