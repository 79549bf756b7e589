# auth answers with what its redis link answers: the link env is there in a built image.
get() { for _ in 1 2 3 4 5 6 7 8 9 10; do wget -qO- "$1" && return; sleep 0.5; done; }
mkdir -p /www
echo "auth, sessions in $(get "http://$REDIS_PORT_6379_TCP_ADDR:$REDIS_PORT_6379_TCP_PORT/")" > /www/index.html
exec httpd -f -p 80 -h /www
